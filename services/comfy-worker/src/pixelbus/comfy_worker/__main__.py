"""``python -m pixelbus.comfy_worker``: serve the comfy pool until SIGTERM, in the shared
process shell (logging, settings, signals, probes, exit code 2 on a refused start).

With ``PIXELBUS_COMFY_AGENT_URL`` set it runs as a remote agent instead (tasks over the
gateway's HTTP endpoints, no NATS).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from pixelbus.comfy_worker.agent import RemoteAgent
from pixelbus.comfy_worker.handler import ComfyHandler
from pixelbus.comfy_worker.service import build_pool, build_runtime
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import Template, load_templates
from pixelbus.runtime.connection import connect
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.service import run_service, service_shell

NAME = "pixelbus-comfy-worker"
log = structlog.get_logger("pixelbus.comfy_worker")


@dataclass(frozen=True)
class Start:
    """What the process starts with: its settings and the graph templates (a bad template
    refuses the start like a bad setting: ``TemplateError`` is a ``ValueError``)."""

    settings: ComfySettings
    templates: Mapping[str, Template]


def load(environ: Mapping[str, str]) -> Start:
    settings = ComfySettings.from_env(environ)
    return Start(settings, load_templates(settings.templates_dir))


async def serve(start: Start) -> None:
    settings, templates = start.settings, start.templates
    log.info("comfy-worker starting", settings=settings.redacted(), templates=sorted(templates))
    pool = build_pool(settings)
    await pool.start()
    try:
        if settings.agent is not None:
            handler = ComfyHandler(settings, pool, templates)
            agent = RemoteAgent(settings.agent, handler, pool, concurrency=settings.concurrency)

            async def agent_ready() -> bool:
                return pool.any_healthy

            async with service_shell(NAME, stop=agent.stop, ready=agent_ready):
                await agent.run()
            return
        nc = await connect(settings.bus.nats_url, NAME)
        await ensure(nc.jetstream(), settings.bus)
        runtime = build_runtime(settings, nc, pool, templates)

        async def ready() -> bool:
            return nc.is_connected and pool.any_healthy

        try:
            async with service_shell(NAME, stop=runtime.stop, ready=ready):
                await runtime.run()
        finally:
            await nc.close()
    finally:
        await pool.close()


def main() -> int:
    return run_service(NAME, load, serve)


if __name__ == "__main__":
    sys.exit(main())
