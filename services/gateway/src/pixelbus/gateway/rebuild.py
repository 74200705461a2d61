"""``rebuild``: replay the whole task stream into an empty KV bucket.

The fold is a pure join, so the rebuilt bucket holds exactly the bytes the live projector
wrote. Usage: ``python -m pixelbus.gateway.rebuild [--bucket NAME] [--replace]``; without
``--replace`` it writes a new bucket (``<live>_REBUILT``) for comparison, with it the live
bucket is purged and refilled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import defaultdict

import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import NotFoundError

from pixelbus.contracts.events import AnyEvent, decode_event
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import STATE_BUCKET, SUBJECT_ROOT, TASK_STREAM
from pixelbus.runtime.connection import connect
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import encode_state

__all__ = ["read_all_events", "rebuild"]

log = structlog.get_logger("pixelbus.rebuild")


async def read_all_events(js: JetStreamContext) -> dict[str, list[AnyEvent]]:
    """Every event in the stream right now, grouped by task, in stream order."""
    info = await js.stream_info(TASK_STREAM)
    last = info.state.last_seq
    events: dict[str, list[AnyEvent]] = defaultdict(list)
    if info.state.messages == 0:
        return events
    sub = await js.pull_subscribe(
        f"{SUBJECT_ROOT}.>",
        stream=TASK_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=60),
    )
    try:
        while True:
            msgs = await sub.fetch(1000, timeout=5)
            done = False
            for msg in msgs:
                event = decode_event(msg.data)
                events[event.task_id].append(event)
                done = msg.metadata.sequence.stream >= last
            await asyncio.gather(*(m.ack() for m in msgs))
            if done:
                return events
    finally:
        await sub.unsubscribe()


async def rebuild(js: JetStreamContext, bucket: str, *, replace: bool = False) -> int:
    """Fill ``bucket`` from the stream; returns the number of tasks written."""
    try:
        kv = await js.key_value(bucket)
        status = await kv.status()
        if status.values and not replace:
            raise RuntimeError(f"bucket {bucket} is not empty; pass --replace to refill it")
        if replace:
            await js.purge_stream(f"KV_{bucket}")
    except NotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
        )
    by_task = await read_all_events(js)
    semaphore = asyncio.Semaphore(256)

    async def write(task_id: str, events: list[AnyEvent]) -> None:
        state = fold(events)
        assert state is not None
        async with semaphore:
            await kv.put(task_id, encode_state(state))

    await asyncio.gather(*(write(t, e) for t, e in by_task.items()))
    log.info("rebuilt", bucket=bucket, tasks=len(by_task))
    return len(by_task)


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rebuild", description=__doc__)
    parser.add_argument("--bucket", default=f"{STATE_BUCKET}_REBUILT")
    parser.add_argument("--replace", action="store_true", help="purge and refill the bucket")
    args = parser.parse_args(argv)
    settings = BusSettings.from_env(os.environ)
    nc = await connect(settings.nats_url, "pixelbus-rebuild")
    try:
        count = await rebuild(nc.jetstream(), args.bucket, replace=args.replace)
    finally:
        await nc.close()
    print(f"rebuilt {count} tasks into {args.bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
