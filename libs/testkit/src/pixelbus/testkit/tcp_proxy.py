"""A TCP proxy whose link can be cut without closing it: a network partition, for tests.

``TcpProxy(target_port)`` listens on a random loopback port and pipes every connection to
the target. ``partition()`` stops forwarding in both directions, on the connections open
now and on those made later, but closes nothing: no FIN, no RST, the peers learn of it only
by their own timeouts (missed raft heartbeats, unanswered pings), as behind a switch that
drops every packet. Nothing is read while the link is cut, so what the peers send waits in
the socket buffers (as it waits in TCP's retransmission queue) and, once those are full,
their writes block. ``heal()`` lets the held bytes through, in order; a connection made
during the partition reaches the target only then. A clean close is another fault (a
crashed peer), not this one.

The proxy runs its own event loop on a daemon thread, so a busy test loop adds no delay to
the link it stands in for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

_HOST = "127.0.0.1"
_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = _HOST, name: str = "") -> None:
        self.target = (target_host, target_port)
        self.name = name or f"proxy-{target_port}"
        self.connections = 0  # accepted so far, for tests that check the link is in use
        #: bytes read from a peer during a partition and held for the heal (a test's proof
        #: that they reached the proxy and went no further)
        self.held = 0
        self._upstream_ports: set[int] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server((_HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def upstream_ports(self) -> frozenset[int]:
        """The local ports of the connections the proxy made to the target (what the
        target sees as their source), so far."""
        with self._lock:
            return frozenset(self._upstream_ports)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._serve())
        return self

    def partition(self) -> None:
        """Stop forwarding (both ways, every connection); returns once no byte passes."""
        self._call(self._set_open(False))

    def heal(self) -> None:
        """Forward again, the held bytes first."""
        self._call(self._set_open(True))

    def close(self) -> None:
        """Close the listener and every connection; safe to call twice."""
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._listener.close()
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _set_open(self, value: bool) -> None:
        # Runs on the proxy's loop: once it returns, every pump sees the new value before
        # it moves another byte (each checks it between its read and its write).
        if value:
            self._open.set()
        else:
            self._open.clear()

    async def _serve(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._accept, sock=self._listener)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cancel()
        if self._links:
            await asyncio.wait(self._links, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The link runs as a task of its own, which ``close`` may cancel: asyncio's streams
        # complain when the task they started for this callback ends cancelled.
        self.connections += 1
        link = asyncio.create_task(self._link(reader, writer))
        self._links.add(link)
        link.add_done_callback(self._links.discard)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._open.wait()  # a connection made during a partition waits for the heal
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the target is down: the client sees its connection closed
            with self._lock:
                self._upstream_ports.add(upstream_writer.get_extra_info("sockname")[1])
            try:
                await self._pipe(reader, writer, upstream_reader, upstream_writer)
            finally:
                upstream_writer.close()
        finally:
            writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        """Both directions until either side closes; then both are closed."""
        pumps = {
            asyncio.create_task(self._pump(reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, writer)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._open.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    return
                if not self._open.is_set():  # cut while this chunk was in flight: hold it
                    self.held += len(data)
                    await self._open.wait()
                    self.held -= len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            return  # a reset on either side ends the link, as it would end the connection
