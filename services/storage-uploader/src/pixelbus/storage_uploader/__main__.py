"""``python -m pixelbus.storage_uploader``: move outputs to storage until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog

from pixelbus.runtime.connection import connect
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.logging import setup_logging
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings, env_int
from pixelbus.runtime.tracing import setup_tracing
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import StorageSettings
from pixelbus.storage_uploader.uploader import Uploader

log = structlog.get_logger("pixelbus.storage_uploader")


async def serve(bus: BusSettings, storage: StorageSettings, concurrency: int) -> None:
    setup_tracing("pixelbus-storage-uploader")
    log.info("storage-uploader starting", bus=bus.redacted(), storage=storage.redacted())
    provider = build_provider(storage)
    nc = await connect(bus.nats_url, "pixelbus-storage-uploader")
    js = nc.jetstream()
    await ensure(js, bus)
    uploader = Uploader(
        nc,
        provider,
        bus,
        concurrency=concurrency,
        retry=storage.retry,
        health_interval_s=storage.health_interval_s,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, uploader.stop)
    try:
        await uploader.run()
    finally:
        await provider.aclose()
        await nc.close()


def main() -> int:
    setup_logging(os.environ.get("PIXELBUS_LOG_LEVEL", "INFO"))
    try:
        bus = BusSettings.from_env(os.environ)
        storage = StorageSettings.from_env(os.environ)
        concurrency = env_int(os.environ, "PIXELBUS_UPLOAD_CONCURRENCY", 32, lo=1, hi=1024)
    except (SettingsError, ValueError) as exc:
        print(f"pixelbus-storage-uploader: {exc}", file=sys.stderr)
        return 2
    import uvloop

    uvloop.run(serve(bus, storage, concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
