"""A real HTTP webhook receiver on a random loopback port (aiohttp, in the test's loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    url: str
    #: The status answered to each delivery in turn; 200 once the list is used up.
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionResetError:  # the sender died mid-request (chaos): nothing arrived
            return web.Response(status=499)
        status = self.answers[len(self.received)] if len(self.received) < len(self.answers) else 200
        self.received.append(
            Received({k.lower(): v for k, v in request.headers.items()}, body, status)
        )
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=status, text="ok" if status < 300 else "not now")

    async def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        async def enough() -> list[Received]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)
            return self.received

        return await asyncio.wait_for(enough(), timeout)


@contextlib.asynccontextmanager
async def webhook_receiver(answers: list[int] | None = None) -> AsyncIterator[Receiver]:
    app = web.Application()
    receiver = Receiver(url="", answers=list(answers or []))
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
