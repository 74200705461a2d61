"""``python -m pixelbus.storage_uploader``: move outputs to storage until SIGTERM."""

from __future__ import annotations

import sys

import structlog

from pixelbus.contracts.subjects import TASK_STREAM, UPLOADER_CONSUMER
from pixelbus.runtime.connection import connect
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.service import consumer_ready, run_service, service_shell
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import UploaderSettings
from pixelbus.storage_uploader.uploader import Uploader

NAME = "pixelbus-storage-uploader"
log = structlog.get_logger("pixelbus.storage_uploader")


async def serve(settings: UploaderSettings) -> None:
    bus, storage = settings.bus, settings.storage
    log.info("storage-uploader starting", bus=bus.redacted(), storage=storage.redacted())
    provider = build_provider(storage, connections=settings.concurrency)
    nc = await connect(bus.nats_url, NAME)
    await ensure(nc.jetstream(), bus)
    uploader = Uploader(
        nc,
        provider,
        bus,
        concurrency=settings.concurrency,
        retry=storage.retry,
        health_interval_s=storage.health_interval_s,
    )
    ready = consumer_ready(nc, TASK_STREAM, UPLOADER_CONSUMER)
    try:
        async with service_shell(NAME, stop=uploader.stop, ready=ready):
            await uploader.run()
    finally:
        await provider.aclose()
        await nc.close()


def main() -> int:
    return run_service(NAME, UploaderSettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
