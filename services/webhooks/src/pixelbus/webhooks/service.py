"""What one webhooks process runs: provisioning of the delivery queue and its consumer,
then the dispatcher until ``stop``. ``__main__`` serves it; the tests' in-process stack
runs the same object beside the other services."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.client import Client

from pixelbus.media.fetch import Resolver, system_resolver
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.runtime.provision import ensure_webhook_dispatcher, ensure_webhooks
from pixelbus.runtime.settings import BusSettings
from pixelbus.webhooks.dispatcher import WebhookDispatcher
from pixelbus.webhooks.sender import WebhookSender
from pixelbus.webhooks.settings import WebhookSettings

__all__ = ["WebhookService"]

log = structlog.get_logger("pixelbus.webhooks")


class WebhookService:
    def __init__(
        self,
        nc: Client,
        bus: BusSettings,
        settings: WebhookSettings,
        *,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._nc = nc
        self._bus = bus
        self.settings = settings
        self.sender = WebhookSender(
            SsrfPolicy(allow_networks=settings.allow_networks),
            timeout_s=settings.timeout_s,
            resolver=resolver,
        )
        self.dispatcher = WebhookDispatcher(nc, settings, self.sender, lease_s=bus.ack_wait_s)
        self._stopping = asyncio.Event()

    async def prepare(self) -> None:
        js = self._nc.jetstream()
        await ensure_webhooks(js, self._bus)
        await ensure_webhook_dispatcher(
            # a short lease like every consumer's: the POST under way heartbeats, so a killed
            # dispatcher's delivery comes back within seconds, not after its timeout
            js,
            max_attempts=self.settings.max_attempts,
            ack_wait_s=self._bus.ack_wait_s,
        )
        if self.settings.secret_generated:
            log.warning(
                "PIXELBUS_WEBHOOK_SECRET is not set: webhooks are signed with a random "
                "secret of this process, which receivers cannot know (development only)"
            )

    async def run(self) -> None:
        """Deliver until ``stop``; a delivery under way when it comes gets its timeout."""
        try:
            await self.prepare()
            if self._stopping.is_set():
                return
            log.info("webhooks started", settings=self.settings.redacted())
            await self.dispatcher.run()
        finally:
            with contextlib.suppress(Exception):
                await self.sender.aclose()

    def stop(self) -> None:
        self._stopping.set()
        self.dispatcher.stop()
