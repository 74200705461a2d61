"""What one projector process runs: the fold loop, with webhook planning inside its
batches, and the exhausted-task watcher. ``__main__`` serves it; the tests' in-process
stack runs the same object beside the other services."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client

from pixelbus.contracts.subjects import WEBHOOK_STREAM
from pixelbus.projector.exhausted import ExhaustedWatcher
from pixelbus.projector.planner import WebhookPlanner
from pixelbus.projector.projector import Projector
from pixelbus.projector.settings import ProjectorSettings
from pixelbus.runtime.provision import ensure_webhook_queue, remove_legacy_consumers

__all__ = ["ProjectorService"]

log = structlog.get_logger("pixelbus.projector")


class ProjectorService:
    """``run`` until ``stop``. Expects ``ensure`` to have run (the stream, the consumers
    and the state bucket); provisions the webhook queue it plans into, removes the
    consumers of earlier versions, and sizes the planner's horizon on the webhook
    stream's own duplicate window."""

    def __init__(self, nc: Client, settings: ProjectorSettings) -> None:
        self._nc = nc
        self._settings = settings
        self._stopping = asyncio.Event()
        self.watcher = ExhaustedWatcher(nc)
        self.projector: Projector | None = None

    async def prepare(self) -> None:
        js = self._nc.jetstream()
        await ensure_webhook_queue(js, self._settings.bus)
        await remove_legacy_consumers(js)
        info = await js.stream_info(WEBHOOK_STREAM)
        window = info.config.duplicate_window or self._settings.bus.duplicate_window_s
        # the webhook targets it remembers: one per KiB of the state cache's budget
        targets = max(1024, self._settings.cache_bytes // 1024)
        planner = WebhookPlanner(js, duplicate_window_s=window, cache_size=targets)
        self.projector = Projector(
            self._nc,
            batch=self._settings.batch,
            planner=planner,
            cache_bytes=self._settings.cache_bytes,
            linger_s=self._settings.linger_ms / 1000,
        )
        log.info("projector prepared", webhook_duplicate_window_s=window)

    async def run(self) -> None:
        if self.projector is None:
            await self.prepare()
        if self._stopping.is_set():
            return
        assert self.projector is not None
        await asyncio.gather(self.projector.run(), self.watcher.run())

    def stop(self) -> None:
        self._stopping.set()
        self.watcher.stop()
        if self.projector is not None:
            self.projector.stop()
