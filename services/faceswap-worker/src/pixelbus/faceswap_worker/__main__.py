"""``python -m pixelbus.faceswap_worker``: serve the face-swap pool until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog

from pixelbus.contracts.subjects import OUTPUTS_BUCKET, pool_for_environment
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.engines.setup import build_catalog
from pixelbus.faceswap_worker.handler import FaceSwapHandler
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.runtime.connection import connect
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.logging import setup_logging
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.tracing import setup_tracing
from pixelbus.runtime.worker import WorkerRuntime

log = structlog.get_logger("pixelbus.faceswap_worker")


async def serve(settings: FaceSwapSettings) -> None:
    setup_tracing("pixelbus-faceswap-worker")
    log.info("faceswap-worker starting", settings=settings.redacted())
    builtin = await asyncio.to_thread(LandmarkEngine)  # loads its models once
    catalog = await asyncio.to_thread(build_catalog, settings, builtin)
    log.info("engines ready", models=catalog.names())
    nc = await connect(settings.bus.nats_url, "pixelbus-faceswap-worker")
    js = nc.jetstream()
    await ensure(js, settings.bus)
    handler = FaceSwapHandler(catalog, settings, ObjectReader(js, OUTPUTS_BUCKET))
    runtime = WorkerRuntime(
        nc=nc,
        js=js,
        pool=pool_for_environment("face_swap"),
        handlers={"face_swap": handler},
        settings=settings.bus,
        concurrency=settings.concurrency,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop)
    try:
        await runtime.run()
    finally:
        await nc.close()


def main() -> int:
    setup_logging(os.environ.get("PIXELBUS_LOG_LEVEL", "INFO"))
    try:
        settings = FaceSwapSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"pixelbus-faceswap-worker: {exc}", file=sys.stderr)
        return 2
    import uvloop

    try:
        uvloop.run(serve(settings))
    except SettingsError as exc:
        print(f"pixelbus-faceswap-worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
