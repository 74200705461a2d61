"""``python -m pixelbus.projector`` (or ``pixelbus-projector``): fold the task events into
the state bucket, plan webhooks and fail exhausted tasks until SIGTERM."""

from __future__ import annotations

import sys

import structlog

from pixelbus.contracts.subjects import PROJECTOR_CONSUMER, TASK_STREAM
from pixelbus.projector.service import ProjectorService
from pixelbus.projector.settings import ProjectorSettings
from pixelbus.runtime.connection import connect
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.service import consumer_ready, run_service, service_shell

NAME = "pixelbus-projector"
log = structlog.get_logger("pixelbus.projector")


async def serve(settings: ProjectorSettings) -> None:
    log.info("projector starting", settings=settings.redacted())
    nc = await connect(settings.bus.nats_url, NAME)
    await ensure(nc.jetstream(), settings.bus)
    service = ProjectorService(nc, settings)
    ready = consumer_ready(nc, TASK_STREAM, PROJECTOR_CONSUMER)
    try:
        async with service_shell(NAME, stop=service.stop, ready=ready):
            await service.run()
    finally:
        await nc.close()
    log.info("projector stopped")


def main() -> int:
    return run_service(NAME, ProjectorSettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
