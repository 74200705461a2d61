"""``python -m pixelbus.webhooks`` (or ``pixelbus-webhooks``): deliver the queued
webhooks until SIGTERM."""

from __future__ import annotations

import sys

import structlog

from pixelbus.contracts.subjects import WEBHOOK_DISPATCHER_CONSUMER, WEBHOOK_STREAM
from pixelbus.runtime.connection import connect
from pixelbus.runtime.service import consumer_ready, run_service, service_shell
from pixelbus.webhooks.service import WebhookService
from pixelbus.webhooks.settings import WebhooksProcessSettings

NAME = "pixelbus-webhooks"
log = structlog.get_logger("pixelbus.webhooks")


async def serve(settings: WebhooksProcessSettings) -> None:
    log.info("webhooks starting", bus=settings.bus.redacted())
    nc = await connect(settings.bus.nats_url, NAME)
    service = WebhookService(nc, settings.bus, settings.webhooks)
    ready = consumer_ready(nc, WEBHOOK_STREAM, WEBHOOK_DISPATCHER_CONSUMER)
    try:
        async with service_shell(NAME, stop=service.stop, ready=ready):
            await service.run()
    finally:
        await nc.close()
    log.info("webhooks stopped")


def main() -> int:
    return run_service(NAME, WebhooksProcessSettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
