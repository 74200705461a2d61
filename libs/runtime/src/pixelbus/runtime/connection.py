"""Connecting to NATS: reconnect forever, log state changes, never hang a start."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client

__all__ = ["connect"]

log = structlog.get_logger("pixelbus.nats")


async def connect(url: str, name: str, *, connect_timeout_s: float = 5) -> Client:
    """Connect once (failing fast at start), then reconnect forever on loss."""

    client: Client | None = None

    async def on_disconnect() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own close at shutdown, not a fault
        log.warning("nats disconnected", service=name)

    async def on_reconnect() -> None:
        log.info("nats reconnected", service=name)

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", service=name, error=str(exc))

    client = await nats.connect(
        servers=[url],
        name=name,
        connect_timeout=connect_timeout_s,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    return client
