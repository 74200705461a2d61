"""``python -m pixelbus.faceswap_worker``: serve the face-swap pool until SIGTERM."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid

import structlog

from pixelbus.contracts.subjects import (
    FACE_SWAP_ENVIRONMENT,
    OUTPUTS_BUCKET,
    TASK_STREAM,
    pool_for_environment,
)
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.engines.setup import build_catalog
from pixelbus.faceswap_worker.handler import FaceSwapHandler
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.faceswap_worker.video import open_video
from pixelbus.runtime.connection import connect
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.service import consumer_ready, run_service, service_shell
from pixelbus.runtime.worker import WorkerRuntime

NAME = "pixelbus-faceswap-worker"
log = structlog.get_logger("pixelbus.faceswap_worker")


async def serve(settings: FaceSwapSettings) -> None:
    log.info("faceswap-worker starting", settings=settings.redacted())
    builtin = await asyncio.to_thread(LandmarkEngine)  # loads its models once
    catalog = await asyncio.to_thread(build_catalog, settings, builtin)
    log.info("engines ready", models=catalog.names())
    nc = await connect(settings.bus.nats_url, NAME)
    js = nc.jetstream()
    await ensure(js, settings.bus)
    worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    video = await open_video(nc, settings, catalog, worker_id)
    handler = FaceSwapHandler(
        catalog, settings, ObjectReader(js, OUTPUTS_BUCKET), video=video.splitter
    )
    pool = pool_for_environment(FACE_SWAP_ENVIRONMENT)
    runtime = WorkerRuntime(
        nc=nc,
        js=js,
        pool=pool,
        handlers={"face_swap": handler},
        settings=settings.bus,
        concurrency=settings.concurrency,
        worker_id=worker_id,
    )
    ready = consumer_ready(nc, TASK_STREAM, pool.durable)

    def stop() -> None:
        runtime.stop()
        video.stop()

    try:
        async with service_shell(NAME, stop=stop, ready=ready):
            await asyncio.gather(runtime.run(), video.run())
    finally:
        await nc.close()


def main() -> int:
    return run_service(NAME, FaceSwapSettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
