"""Projector settings from the environment: the bus settings, the batch size, the cache."""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

from dataclasses import dataclass

from pixelbus.runtime.settings import BusSettings, Settings, integer, section, setting

__all__ = ["ProjectorSettings"]


@dataclass(frozen=True)
class ProjectorSettings(Settings):
    bus: BusSettings = section(BusSettings)
    batch: int = setting("PIXELBUS_PROJECTOR_BATCH", 512, integer(1, 10_000))
    """events the projector folds per batch at most (one KV read and write per task per batch)"""
    cache_bytes: int = setting("PIXELBUS_PROJECTOR_CACHE_BYTES", 32 << 20, integer(0, 1 << 40))
    """task states the projector keeps in memory, counted in encoded bytes (a state takes about
    three times that as Python objects); it saves the read before each write; least recently
    used out; the webhook-target cache holds one entry per KiB of it"""
    linger_ms: int = setting("PIXELBUS_PROJECTOR_LINGER_MS", 2, integer(0, 1000))
    """how long the projector waits for more events before folding a batch, so that a task's
    events, which come about a millisecond apart, cost one KV write instead of one each: under
    load (a batch of 16 events or more) the whole time, at light load only until each task of
    the batch has ended; `0` never waits"""
