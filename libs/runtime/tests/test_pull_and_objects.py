"""PullConsumer streams a durable consumer within its credit; ObjectReader reads what
ObjectStore wrote."""

from __future__ import annotations

import asyncio
import os

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ObjectStoreConfig, StreamConfig
from nats.js.errors import ObjectNotFoundError

from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.pull import PullConsumer, dispatch
from pixelbus.testkit.nats_server import NatsServer
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


async def test_a_message_is_handed_over_the_moment_it_arrives(nc: Client) -> None:
    await _stream(nc)
    # The request outlives the test: nats.py's fetch(100) would hold this message until
    # the request expired (or its batch filled), so the wait below would run out.
    consumer = PullConsumer(nc, "S", "d", credit=100, expires_s=600.0)
    await consumer.start()
    first = asyncio.ensure_future(consumer.next())
    await nc.jetstream().publish("s.one", b"1")
    msg = await asyncio.wait_for(first, 60)
    assert msg is not None and msg.data == b"1"
    assert consumer.requests_sent == 1  # delivered on the first request, still open
    await msg.ack()
    consumer.release()
    await consumer.close()


async def test_credit_bounds_what_is_delivered_and_is_topped_up_on_release(
    nc: Client,
) -> None:
    await _stream(nc)
    js = nc.jetstream()
    for i in range(30):
        await js.publish(f"s.{i}", str(i).encode())
    consumer = PullConsumer(nc, "S", "d", credit=5, threshold=2)
    await consumer.start()
    held = [await consumer.next() for _ in range(5)]
    assert all(m is not None for m in held)

    async def ack_pending(expected: int) -> int | None:
        info = await js.consumer_info("S", "d")
        return info.num_ack_pending if info.num_ack_pending == expected else None

    # Five held, none more delivered: the credit is all used.
    await eventually(lambda: ack_pending(5))
    assert consumer.queued == 0
    # Two done: their credit is asked for again, delivered, waiting to be taken.
    for msg in held[:2]:
        await msg.ack()  # type: ignore[union-attr]
        consumer.release()
    await eventually(lambda: ack_pending(5))

    async def queued(expected: int) -> bool | None:
        return True if consumer.queued == expected else None

    await eventually(lambda: queued(2))
    await consumer.close()


async def test_credit_is_asked_again_at_the_threshold_while_a_request_is_open(
    nc: Client,
) -> None:
    await _stream(nc)
    js = nc.jetstream()
    for i in range(3):
        await js.publish(f"s.{i}", str(i).encode())
    consumer = PullConsumer(nc, "S", "d", credit=5, threshold=2)
    await consumer.start()
    held = [await consumer.next() for _ in range(3)]  # the open request still owes 2
    assert consumer.requests_sent == 1
    await held[0].ack()  # type: ignore[union-attr]
    consumer.release()  # 1 free, 2 owed: below the threshold, nothing asked
    assert consumer.requests_sent == 1
    await held[1].ack()  # type: ignore[union-attr]
    consumer.release()  # 2 free: asked for at once
    await js.publish("s.3", b"3")
    await js.publish("s.4", b"4")
    await js.publish("s.5", b"5")
    got = [await asyncio.wait_for(consumer.next(), 5) for _ in range(2)]
    assert consumer.requests_sent == 2
    assert sorted(m.data for m in got if m is not None) == [b"3", b"4"]
    await consumer.close()


async def test_dispatch_runs_at_most_credit_handlers(nc: Client) -> None:
    await _stream(nc)
    js = nc.jetstream()
    for i in range(30):
        await js.publish(f"s.{i}", str(i).encode())
    consumer = PullConsumer(nc, "S", "d", credit=4, expires_s=1.0)
    await consumer.start()
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
            consumer.stop()

    leftover = await asyncio.wait_for(dispatch(consumer, handle), 20)
    await asyncio.gather(*leftover)
    await consumer.close()
    assert sorted(seen, key=int) == [str(i).encode() for i in range(30)]
    assert peak == 4


async def test_requests_that_expire_are_renewed(nc: Client) -> None:
    await _stream(nc)
    consumer = PullConsumer(nc, "S", "d", credit=3, expires_s=0.5, heartbeat_s=0.2)
    await consumer.start()
    got = asyncio.ensure_future(consumer.next())

    async def renewed() -> bool | None:
        return True if consumer.requests_sent >= 3 else None

    await eventually(renewed, timeout=10)  # each 0.5 s request expired and was renewed
    await nc.jetstream().publish("s.late", b"late")
    msg = await asyncio.wait_for(got, 5)
    assert msg is not None and msg.data == b"late"
    await consumer.close()


async def test_a_restarted_server_is_asked_again(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await _stream(nc)
        consumer = PullConsumer(nc, "S", "d", credit=10, expires_s=30, heartbeat_s=1.0)
        await consumer.start()
        got = asyncio.ensure_future(consumer.next())
        nats_server.stop()
        nats_server.start()

        async def publish_after_reconnect() -> bool | None:
            if not nc.is_connected:
                return None
            try:  # JetStream answers once it has recovered its store
                await nc.jetstream().publish("s.after", b"after", timeout=1)
            except (TimeoutError, nats.errors.Error):
                return None
            return True

        await eventually(publish_after_reconnect, timeout=15)
        # The request sent before the restart died with it; a new one gets the message
        # (within a tick of the reconnect, long before the 30 s request would expire).
        msg = await asyncio.wait_for(got, 5)
        assert msg is not None and msg.data == b"after"
        await consumer.close()
    finally:
        await nc.close()


async def test_nothing_is_asked_while_the_gate_is_closed(nc: Client) -> None:
    await _stream(nc)
    js = nc.jetstream()
    await js.publish("s.1", b"1")
    opened = asyncio.Event()

    async def gate() -> int:
        await opened.wait()
        return 1

    consumer = PullConsumer(nc, "S", "d", credit=5, gate=gate)
    await consumer.start()
    got = asyncio.ensure_future(consumer.next())
    info = await js.consumer_info("S", "d")
    assert info.num_waiting == 0 and info.num_ack_pending == 0 and not got.done()
    opened.set()
    msg = await asyncio.wait_for(got, 5)
    assert msg is not None and msg.data == b"1"
    await consumer.close()


async def test_close_releases_what_was_delivered_but_not_taken(nc: Client) -> None:
    await _stream(nc)
    js = nc.jetstream()
    consumer = PullConsumer(nc, "S", "d", credit=10, expires_s=1.0)
    await consumer.start()
    await js.publish("s.late", b"late")

    async def delivered() -> bool | None:
        return True if consumer.queued == 1 else None

    await eventually(delivered, timeout=5)
    await consumer.close()
    # Released with a nak, so another puller gets it at once (not after the 30 s ack wait).
    other = await js.pull_subscribe_bind(durable="d", stream="S")
    (msg,) = await other.fetch(1, timeout=5)
    assert msg.data == b"late" and msg.metadata.num_delivered == 2


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
