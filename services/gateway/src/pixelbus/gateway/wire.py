"""uvicorn's HTTP protocol with each answer sent in one system call.

uvicorn writes a response's head and its body with one ``transport.write`` each, so a
small JSON answer costs two ``send``s here and wakes its client twice (the client reads
the head alone, then the body). ``CorkedHttpToolsProtocol`` hands uvicorn a transport that
gathers the writes of one event-loop turn and sends them together at the end of the turn:
nothing waits longer than that turn, the order of bytes is kept, and a streamed answer
(SSE) still goes out chunk by chunk, as each chunk is written in a turn of its own. A
WebSocket, once upgraded, writes to the connection directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CorkedHttpToolsProtocol"]


class _CorkedTransport:
    """A transport whose writes in one loop turn leave in one ``write`` (see module)."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()  # what was written before close() is sent, as with any transport
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=CorkedHttpToolsProtocol)``."""

    def connection_made(self, transport: Any) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance check
        self._plain_transport = transport
        corked: Any = _CorkedTransport(transport, self.loop)
        super().connection_made(corked)

    def handle_websocket_upgrade(self) -> None:
        """A WebSocket gets the connection's own transport (its frames are not gathered)."""
        self.transport = self._plain_transport
        super().handle_websocket_upgrade()
