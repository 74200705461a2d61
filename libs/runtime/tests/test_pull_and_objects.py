"""PullFeed hands messages over as they arrive; ObjectReader reads what ObjectStore wrote."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ObjectStoreConfig, StreamConfig
from nats.js.errors import ObjectNotFoundError

from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.pull import PullFeed, dispatch
from pixelbus.testkit.waiting import eventually


async def _stream(nc: Client, max_ack_pending: int = 1000) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
    await js.add_consumer(
        "S",
        ConsumerConfig(
            durable_name="d",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=max_ack_pending,
        ),
    )


async def test_a_message_is_handed_over_before_the_batch_fills(nc: Client) -> None:
    await _stream(nc)
    feed = PullFeed(nc, "S", "d", expires_s=5.0)
    await feed.start()
    pull = feed.pull(100).__aiter__()
    first = asyncio.ensure_future(pull.__anext__())
    await asyncio.sleep(0)  # let the request go out
    sent = time.monotonic()
    await nc.jetstream().publish("s.one", b"1")
    msg = await asyncio.wait_for(first, 2)
    # nats.py's fetch(100) would hold this message until the 5 s request expired.
    assert msg.data == b"1" and time.monotonic() - sent < 1.0
    await msg.ack()
    await pull.aclose()
    await feed.close()


async def test_close_releases_what_the_open_request_still_delivers(nc: Client) -> None:
    await _stream(nc)
    js = nc.jetstream()
    feed = PullFeed(nc, "S", "d", expires_s=1.0)
    await feed.start()
    stop = asyncio.Event()
    stop.set()
    # A stopped pull leaves its request open; a message published now lands in the feed.
    assert [m async for m in feed.pull(10, stop)] == []
    await js.publish("s.late", b"late")

    async def delivered() -> bool | None:
        return True if feed.queued == 1 else None

    await eventually(delivered, timeout=5)
    await feed.close()
    # Released with a nak, so another puller gets it at once (not after the 30 s ack wait).
    other = await js.pull_subscribe_bind(durable="d", stream="S")
    (msg,) = await other.fetch(1, timeout=5)
    assert msg.data == b"late" and msg.metadata.num_delivered == 2


async def test_dispatch_runs_at_most_concurrency_handlers(nc: Client) -> None:
    await _stream(nc)
    js = nc.jetstream()
    for i in range(30):
        await js.publish(f"s.{i}", str(i).encode())
    feed = PullFeed(nc, "S", "d", expires_s=1.0)
    await feed.start()
    stop = asyncio.Event()
    running = 0
    peak = 0
    seen: list[bytes] = []

    async def handle(msg: Msg) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        seen.append(msg.data)
        await msg.ack()
        running -= 1
        if len(seen) == 30:
            stop.set()

    leftover = await asyncio.wait_for(dispatch(feed, handle, concurrency=4, stop=stop), 20)
    await asyncio.gather(*leftover)
    await feed.close()
    assert sorted(seen, key=int) == [str(i).encode() for i in range(30)]
    assert peak == 4


@pytest.mark.parametrize("size", [0, 11, 128 * 1024, 300 * 1024 + 7])
async def test_object_reader_reads_what_object_store_wrote(nc: Client, size: int) -> None:
    js = nc.jetstream()
    store = await js.create_object_store("B", config=ObjectStoreConfig(bucket="B"))
    data = os.urandom(size)
    await store.put("a/b.png", data)
    reader = ObjectReader(js, "B")
    chunks = [chunk async for chunk in reader.chunks("a/b.png")]
    assert b"".join(chunks) == data
    assert len(chunks) == (size + 128 * 1024 - 1) // (128 * 1024)
    # No consumer is left behind (nats.py's get leaves an ordered consumer per read).
    assert (await js.stream_info("OBJ_B")).state.consumer_count == 0


async def test_object_reader_missing_and_deleted(nc: Client) -> None:
    js = nc.jetstream()
    store = await js.create_object_store("B", config=ObjectStoreConfig(bucket="B"))
    reader = ObjectReader(js, "B")
    with pytest.raises(ObjectNotFoundError):
        await reader.read("nope")
    await store.put("x", b"1234")
    await store.delete("x")
    with pytest.raises(ObjectNotFoundError):
        await reader.read("x")
