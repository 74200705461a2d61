"""TcpProxy pipes both ways; a partition holds every byte (open connections and new ones)
without closing anything, and a heal delivers what was held, in order."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from pixelbus.testkit.tcp_proxy import TcpProxy
from pixelbus.testkit.waiting import eventually

# every test listens (the proxy, the echo server)
pytestmark = [pytest.mark.timeout(20), pytest.mark.servers]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def connect(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def held(proxy: TcpProxy, count: int) -> bool | None:
    return True if proxy.held == count else None


async def accepted(proxy: TcpProxy, count: int) -> bool | None:
    return True if proxy.connections == count else None


async def test_a_partition_holds_bytes_until_the_heal(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        reader, writer = await connect(proxy)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"

        proxy.partition()
        assert proxy.partitioned
        writer.write(b"held-")
        late_reader, late_writer = await connect(proxy)  # accepted, not forwarded
        late_writer.write(b"late")
        # positive proof, no quiet window: the bytes reached the proxy and wait in it, and
        # the late connection was accepted but has no link to the target yet
        await eventually(lambda: held(proxy, 5))
        await eventually(lambda: accepted(proxy, 2))
        assert len(proxy.upstream_ports()) == 1
        assert not reader.at_eof()  # nothing closed either

        proxy.heal()
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"held-after"
        assert await asyncio.wait_for(late_reader.readexactly(4), 5) == b"late"
        assert proxy.connections == 2
        assert len(proxy.upstream_ports()) == 2
        for w in (writer, late_writer):
            w.close()


async def test_a_target_that_refuses_closes_the_client_side() -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        with TcpProxy(bound.getsockname()[1]) as proxy:
            reader, writer = await connect(proxy)
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
