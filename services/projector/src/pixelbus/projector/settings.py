"""Projector settings from the environment: the bus settings, the batch size, the cache."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelbus.runtime.settings import BusSettings, env_int

__all__ = ["ProjectorSettings"]


@dataclass(frozen=True)
class ProjectorSettings:
    bus: BusSettings = field(default_factory=BusSettings)
    #: Events folded per batch at most (one KV read and write per task per batch).
    batch: int = 512
    #: Bytes of task states the projector keeps in memory (saves a read before a write);
    #: its cache of webhook targets holds one entry per KiB of it.
    cache_bytes: int = 32 * 1024 * 1024
    #: How long a batch waits for more events, so that a task's events fold into one KV
    #: write: under load the whole time, at light load until its tasks ended (0: never).
    linger_ms: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProjectorSettings:
        return cls(
            bus=BusSettings.from_env(environ),
            batch=env_int(environ, "PIXELBUS_PROJECTOR_BATCH", cls.batch, lo=1, hi=10_000),
            cache_bytes=env_int(
                environ, "PIXELBUS_PROJECTOR_CACHE_BYTES", cls.cache_bytes, lo=0, hi=1 << 40
            ),
            linger_ms=env_int(
                environ, "PIXELBUS_PROJECTOR_LINGER_MS", cls.linger_ms, lo=0, hi=1000
            ),
        )

    def redacted(self) -> dict[str, Any]:
        return {
            "bus": self.bus.redacted(),
            "batch": self.batch,
            "cache_bytes": self.cache_bytes,
            "linger_ms": self.linger_ms,
        }
