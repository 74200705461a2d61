"""``rebuild``: replay the whole task stream into an empty KV bucket.

The fold is a pure join, so the rebuilt bucket holds exactly the bytes the live projector
wrote. Usage: ``python -m pixelbus.projector.rebuild [--bucket NAME] [--replace]``;
without ``--replace`` it writes a new bucket (``<live>_REBUILT``) for comparison, with it
the live bucket is purged and refilled (run it with the projector's NATS user, the only
one allowed to write the state; the live projectors may keep running: both fold with
compare-and-swap, and the fold is a join). A rebuild only writes states: it never plans
webhooks and never frees quota slots (those follow the live projector's batches alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import defaultdict

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from pixelbus.contracts.events import AnyEvent, TaskCreated, decode_event
from pixelbus.contracts.subjects import INDEX_BUCKET, STATE_BUCKET, SUBJECT_ROOT, TASK_STREAM
from pixelbus.projector.projector import fold_into_kv
from pixelbus.runtime.connection import connect
from pixelbus.runtime.pull import PullConsumer
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.task_index import TaskIndex

__all__ = ["REBUILD_CONSUMER", "read_all_events", "rebuild"]

log = structlog.get_logger("pixelbus.rebuild")


#: The rebuild's own reader of the stream (no acks, gone a minute after it stops): one
#: name, so that the projector's NATS user needs no right on any other consumer.
REBUILD_CONSUMER = "rebuild"


async def read_all_events(nc: Client) -> dict[str, list[AnyEvent]]:
    """Every event in the stream right now, grouped by task, in stream order.

    One rebuild at a time: a second one finds the reader in use and is refused.
    """
    js = nc.jetstream()
    info = await js.stream_info(TASK_STREAM)
    last = info.state.last_seq
    events: dict[str, list[AnyEvent]] = defaultdict(list)
    if info.state.messages == 0:
        return events
    try:
        await js.consumer_info(TASK_STREAM, REBUILD_CONSUMER)
    except NotFoundError:
        pass
    else:
        raise RuntimeError("another rebuild is reading the stream (or stopped < 1 min ago)")
    await js.add_consumer(
        TASK_STREAM,
        ConsumerConfig(
            name=REBUILD_CONSUMER,
            filter_subject=f"{SUBJECT_ROOT}.>",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
        ),
    )
    consumer = PullConsumer(nc, TASK_STREAM, REBUILD_CONSUMER, credit=2000, threshold=1000)
    await consumer.start()
    try:
        while msgs := await consumer.batch(1000):
            consumer.release(len(msgs))
            for msg in msgs:
                event = decode_event(msg.data)
                events[event.task_id].append(event)
                if msg.metadata.sequence.stream >= last:
                    return events
        return events
    finally:
        await consumer.close()
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(TASK_STREAM, REBUILD_CONSUMER)


async def rebuild(nc: Client, bucket: str, *, replace: bool = False) -> int:
    """Fill ``bucket`` from the stream; returns the number of tasks written."""
    js = nc.jetstream()
    kv = await _open_bucket(js, bucket, purge=replace)
    if not replace and (await kv.status()).values:
        raise RuntimeError(f"bucket {bucket} is not empty; pass --replace to refill it")
    by_task = await read_all_events(nc)
    semaphore = asyncio.Semaphore(256)

    async def write(task_id: str, events: list[AnyEvent]) -> None:
        async with semaphore:
            # A join with compare-and-swap, like the live projector's: a state it wrote
            # since the purge is folded in, never overwritten (so --replace is safe while
            # projectors run); into an empty bucket it writes exactly fold(events).
            await fold_into_kv(kv, task_id, events)

    await asyncio.gather(*(write(t, e) for t, e in by_task.items()))
    await _rebuild_index(js, index_bucket_of(bucket), by_task, replace=replace)
    log.info("rebuilt", bucket=bucket, tasks=len(by_task))
    return len(by_task)


def index_bucket_of(bucket: str) -> str:
    """The task index that goes with a state bucket: the live one's, or ``<bucket>_INDEX``."""
    return INDEX_BUCKET if bucket == STATE_BUCKET else f"{bucket}_INDEX"


async def _rebuild_index(
    js: JetStreamContext, bucket: str, by_task: dict[str, list[AnyEvent]], *, replace: bool
) -> None:
    """Every task of the stream, in creation order, into the task index ``bucket``."""
    kv = await _open_bucket(js, bucket, purge=replace)
    entries = [
        (event.owner, event.task_id, event.occurred_at.isoformat())
        for events in by_task.values()
        for event in events
        if isinstance(event, TaskCreated)
    ]
    index = TaskIndex(kv)
    for start in range(0, len(entries), 1024):
        await index.add(entries[start : start + 1024])


async def _open_bucket(js: JetStreamContext, bucket: str, *, purge: bool) -> KeyValue:
    """The KV bucket ``bucket``, created when missing, emptied first when ``purge``."""
    try:
        kv = await js.key_value(bucket)
        if purge:
            await js.purge_stream(f"KV_{bucket}")
    except NotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
        )
    return kv


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rebuild", description=__doc__)
    parser.add_argument("--bucket", default=f"{STATE_BUCKET}_REBUILT")
    parser.add_argument("--replace", action="store_true", help="purge and refill the bucket")
    args = parser.parse_args(argv)
    settings = BusSettings.from_env(os.environ)
    nc = await connect(settings.nats_url, "pixelbus-rebuild")
    try:
        count = await rebuild(nc, args.bucket, replace=args.replace)
    finally:
        await nc.close()
    print(f"rebuilt {count} tasks into {args.bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
