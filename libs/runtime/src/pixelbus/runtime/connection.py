"""Connecting to NATS: reconnect forever, log state changes, never hang a start.

Every connection made here counts its traffic in ``TRAFFIC`` (the process's totals, read by
``/metrics`` as ``pixelbus_nats_requests_total`` and ``pixelbus_nats_messages_sent_total``):
a *request* is an exchange the process waits for (a JetStream publish, a KV or stream API
call, a double ack), the cost that adds up along a task's critical path.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["TRAFFIC", "CountingClient", "Traffic", "connect"]

log = structlog.get_logger("pixelbus.nats")


class Traffic:
    """Messages this process sent to NATS, and how many of them awaited a reply."""

    requests: int = 0
    sent: int = 0


TRAFFIC = Traffic()


class CountingClient(Client):
    """nats.py's client, counting into ``TRAFFIC`` (a request is also one message sent),
    with a leaner ``request``.

    Every JetStream publish and KV write is a request, several per task in each service.
    nats.py's own draws two random bytes from the OS for each (a system call) and waits
    with ``asyncio.wait_for``; this one numbers its requests under one reply subscription
    of the connection and arms one timer: the same wire exchange (a publish with a reply
    subject, answered on the connection's wildcard inbox), the same errors (nats.py's
    ``TimeoutError``, ``NoRespondersError``), about a tenth less CPU in the projector and
    the worker (same-run totals over a bench: 358/342 vs 412/380 and 338/341 vs 379/371).
    """

    def __init__(self) -> None:
        super().__init__()
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_prefix = ""
        self._reply_numbers = itertools.count()
        self._reply_setup = asyncio.Lock()

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        TRAFFIC.sent += 1
        await super().publish(*args, **kwargs)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        TRAFFIC.requests += 1
        if old_style:
            return await super().request(subject, payload, timeout, old_style, headers)
        if not self._reply_prefix:
            await self._listen_for_replies()
        token = str(next(self._reply_numbers))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._replies[token] = reply
        timer = loop.call_later(timeout, _time_out, reply)
        try:
            await self.publish(subject, payload, reply=self._reply_prefix + token, headers=headers)
            msg = await reply
        finally:
            timer.cancel()
            self._replies.pop(token, None)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def _listen_for_replies(self) -> None:
        async with self._reply_setup:
            if not self._reply_prefix:
                prefix = f"{self.new_inbox()}."
                await self.subscribe(f"{prefix}*", cb=self._on_reply)
                self._reply_prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        reply = self._replies.get(msg.subject[len(self._reply_prefix) :])
        if reply is not None and not reply.done():
            reply.set_result(msg)


_NO_RESPONDERS = "503"


def _time_out(reply: asyncio.Future[Msg]) -> None:
    if not reply.done():
        reply.set_exception(nats.errors.TimeoutError())


async def connect(url: str, name: str, *, connect_timeout_s: int = 5) -> Client:
    """Connect once (failing fast at start), then reconnect forever on loss."""

    client = CountingClient()

    async def on_disconnect() -> None:
        if client.is_closed or client.is_draining:
            return  # our own close at shutdown, not a fault
        log.warning("nats disconnected", service=name)

    async def on_reconnect() -> None:
        log.info("nats reconnected", service=name)

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", service=name, error=str(exc))

    await client.connect(
        servers=[url],
        name=name,
        connect_timeout=connect_timeout_s,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, sleeps a float
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    return client
