"""The webhook loops of one gateway: provisioning, the planner and the dispatcher."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.client import Client

from pixelbus.contracts.subjects import WEBHOOK_LOG_BUCKET
from pixelbus.gateway.webhooks.dispatcher import WebhookDispatcher
from pixelbus.gateway.webhooks.log import DeliveryLogStore
from pixelbus.gateway.webhooks.planner import WebhookPlanner
from pixelbus.gateway.webhooks.sender import WebhookSender
from pixelbus.gateway.webhooks.settings import WebhookSettings
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.runtime.provision import ensure_webhooks
from pixelbus.runtime.settings import BusSettings

__all__ = ["WebhookService"]

log = structlog.get_logger("pixelbus.webhooks")


class WebhookService:
    """Start with ``start``; ``log`` is the delivery log the route reads."""

    def __init__(self, nc: Client, settings: WebhookSettings) -> None:
        self._nc = nc
        self.settings = settings
        self.planner = WebhookPlanner(nc)
        self.sender = WebhookSender(
            SsrfPolicy(allow_networks=settings.allow_networks), timeout_s=settings.timeout_s
        )
        self.dispatcher = WebhookDispatcher(nc, settings, self.sender)
        self.log: DeliveryLogStore | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, bus: BusSettings, *, dispatch: bool = True) -> DeliveryLogStore:
        js = self._nc.jetstream()
        await ensure_webhooks(
            js,
            bus,
            max_attempts=self.settings.max_attempts,
            ack_wait_s=self.settings.timeout_s + 5,
        )
        self.log = DeliveryLogStore(await js.key_value(WEBHOOK_LOG_BUCKET))
        if self.settings.secret_generated:
            log.warning(
                "PIXELBUS_WEBHOOK_SECRET is not set: webhooks are signed with a random "
                "secret of this process, which receivers cannot know (development only)"
            )
        self._tasks.append(asyncio.create_task(self.planner.run()))
        if dispatch:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(self.log)))
        log.info("webhooks started", settings=self.settings.redacted())
        return self.log

    async def stop(self) -> None:
        self.planner.stop()
        self.dispatcher.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=self.settings.timeout_s + 5)
        await self.sender.aclose()
