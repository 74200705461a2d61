"""``CountingClient.request`` against a real nats-server: replies reach their own
requests, silence is nats.py's ``TimeoutError``, no responder is ``NoRespondersError``,
JetStream and KV work through it, and requests keep working after a server restart.
``subscribe_direct``: messages in order, a failing handler does not stop the connection,
drain and unsubscribe work."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import pytest
from nats.aio.msg import Msg

from pixelbus.runtime.connection import TRAFFIC, CountingClient, connect, subscribe_direct
from pixelbus.testkit.nats_server import NatsServer


async def echo_service(nc: CountingClient, subject: str) -> None:
    async def answer(msg: Msg) -> None:
        await asyncio.sleep(0.01 * (int(msg.data) % 3))  # answers out of order
        await msg.respond(b"echo " + msg.data)

    await nc.subscribe(subject, cb=answer)


async def test_concurrent_requests_each_get_their_own_reply(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, "test")
    assert isinstance(nc, CountingClient)
    try:
        await echo_service(nc, "echo")
        before = TRAFFIC.requests
        replies = await asyncio.gather(
            *(nc.request("echo", str(i).encode(), timeout=5) for i in range(50))
        )
        assert [r.data for r in replies] == [f"echo {i}".encode() for i in range(50)]
        assert TRAFFIC.requests - before == 50
    finally:
        await nc.close()


async def test_silence_times_out_and_no_responder_is_said(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, "test")
    try:

        async def never_answer(msg: Msg) -> None:
            return None

        await nc.subscribe("silent", cb=never_answer)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("silent", b"?", timeout=0.2)
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("nobody.listens", b"?", timeout=5)
    finally:
        await nc.close()


async def test_jetstream_and_kv_through_it_across_a_server_restart(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, "test")
    try:
        js = nc.jetstream(timeout=2)
        kv = await js.create_key_value(bucket="LEAN")
        revision = await kv.create("a", b"1")
        assert await kv.update("a", b"2", last=revision) > revision
        nats_server.stop()
        nats_server.start()
        # A request sent while the connection is down is lost and times out, as with
        # nats.py's own request (services retry it); once reconnected, the renewed reply
        # subscription answers.
        with contextlib.suppress(nats.errors.TimeoutError):
            await kv.put("a", b"3")
        await kv.put("a", b"3")
        assert (await kv.get("a")).value == b"3"
    finally:
        await nc.close()


async def test_direct_subscription_in_order_and_survives_a_failing_handler(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, "test")
    try:
        seen: list[bytes] = []
        all_seen = asyncio.get_running_loop().create_future()

        def handle(msg: Msg) -> None:
            if msg.data == b"boom":
                raise RuntimeError("a handler bug")
            seen.append(msg.data)
            if len(seen) == 200 and not all_seen.done():
                all_seen.set_result(None)

        sub = await subscribe_direct(nc, "direct.in", handle)
        await nc.publish("direct.in", b"boom")  # logged; the read loop goes on
        for i in range(200):
            await nc.publish("direct.in", str(i).encode())
        await asyncio.wait_for(all_seen, 10)
        assert seen == [str(i).encode() for i in range(200)]
        assert sub.pending_msgs == 0 and sub.pending_bytes == 0  # nothing counted as queued
        await echo_service(nc, "echo.after")  # the connection still serves requests
        assert (await nc.request("echo.after", b"1", timeout=5)).data == b"echo 1"
        await sub.unsubscribe()
        await nc.publish("direct.in", b"late")
        await nc.flush()
        assert seen[-1] == b"199"
        drained = await subscribe_direct(nc, "direct.drain", handle)
        await drained.drain()  # nats.py's drain joins the stand-in queue: returns at once
    finally:
        await nc.close()
