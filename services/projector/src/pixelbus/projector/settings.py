"""Projector settings from the environment: the bus settings and the batch size."""

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProjectorSettings:
        return cls(
            bus=BusSettings.from_env(environ),
            batch=env_int(environ, "PIXELBUS_PROJECTOR_BATCH", cls.batch, lo=1, hi=10_000),
        )

    def redacted(self) -> dict[str, Any]:
        return {"bus": self.bus.redacted(), "batch": self.batch}
