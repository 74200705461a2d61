"""What the uploader tells the gateway about itself: its provider and whether it is reachable.

The uploader checks its provider now and then (``StorageProvider.check``: a bucket or
account read, cheap) and also learns from every upload; the last verdict is kept here and
published in the ``PIXELBUS_WORKERS`` KV bucket beside the workers' presence, so
``/api/health`` shows it without touching the provider. Pure: the clock is passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

__all__ = ["STORAGE_POOL", "ProviderHealth", "presence_key", "presence_value"]

STORAGE_POOL = "storage"


@dataclass(frozen=True)
class ProviderHealth:
    """The last verdict on the provider: ``reachable`` is ``None`` until one is known."""

    reachable: bool | None = None
    error: str | None = None
    checked_at: datetime | None = None

    def verdict(self, error: str | None, at: datetime) -> ProviderHealth:
        return ProviderHealth(reachable=error is None, error=error, checked_at=at)

    def due(self, now: datetime, interval_s: float) -> bool:
        """Whether a fresh check is due (none yet, or the last one is ``interval_s`` old)."""
        return self.checked_at is None or (now - self.checked_at).total_seconds() >= interval_s


def presence_key(uploader_id: str) -> str:
    return f"{STORAGE_POOL}.{uploader_id}"


def presence_value(
    *, uploader_id: str, provider: str, health: ProviderHealth, in_flight: int, now: datetime
) -> bytes:
    return json.dumps(
        {
            "worker": uploader_id,
            "pool": STORAGE_POOL,
            "provider": provider,
            "reachable": health.reachable,
            "error": health.error,
            "checked_at": health.checked_at.isoformat() if health.checked_at else None,
            "in_flight": in_flight,
            "at": now.isoformat(),
        }
    ).encode()
