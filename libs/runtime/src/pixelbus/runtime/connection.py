"""Connecting to NATS: reconnect forever, log state changes, never hang a start.

Every connection made here counts its traffic in ``TRAFFIC`` (the process's totals, read by
``/metrics`` as ``pixelbus_nats_requests_total`` and ``pixelbus_nats_messages_sent_total``):
a *request* is an exchange the process waits for (a JetStream publish, a KV or stream API
call, a double ack), the cost that adds up along a task's critical path.
"""

from __future__ import annotations

from typing import Any

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
    """nats.py's client, counting into ``TRAFFIC`` (a request is also one message sent)."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        TRAFFIC.sent += 1
        await super().publish(*args, **kwargs)

    async def request(self, *args: Any, **kwargs: Any) -> Msg:
        TRAFFIC.requests += 1
        return await super().request(*args, **kwargs)


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
