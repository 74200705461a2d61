"""``python -m pixelbus.comfy_worker``: serve the comfy pool until SIGTERM.

With ``PIXELBUS_COMFY_AGENT_URL`` set it runs as a remote agent instead (tasks over the
gateway's HTTP endpoints, no NATS).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping

import structlog

from pixelbus.comfy_worker.agent import RemoteAgent
from pixelbus.comfy_worker.handler import ComfyHandler
from pixelbus.comfy_worker.service import build_pool, build_runtime
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import Template, TemplateError, load_templates
from pixelbus.runtime.connection import connect
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.logging import setup_logging
from pixelbus.runtime.probes import ProbeServer, ProbeSettings
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import with_secret_files
from pixelbus.runtime.tracing import setup_tracing

log = structlog.get_logger("pixelbus.comfy_worker")


async def serve(
    settings: ComfySettings, templates: Mapping[str, Template], environ: Mapping[str, str]
) -> None:
    setup_tracing("pixelbus-comfy-worker")
    log.info("comfy-worker starting", settings=settings.redacted(), templates=sorted(templates))
    pool = build_pool(settings)
    await pool.start()
    loop = asyncio.get_running_loop()
    try:
        if settings.agent is not None:
            handler = ComfyHandler(settings, pool, templates)
            agent = RemoteAgent(settings.agent, handler, pool, concurrency=settings.concurrency)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, agent.stop)
            await agent.run()
            return
        nc = await connect(settings.bus.nats_url, "pixelbus-comfy-worker")
        js = nc.jetstream()
        await ensure(js, settings.bus)
        runtime = build_runtime(settings, nc, pool, templates)
        probes = None
        if environ.get("PIXELBUS_PROBE_PORT", "").strip():

            async def ready() -> bool:
                return nc.is_connected and pool.any_healthy

            probes = ProbeServer(
                ProbeSettings.from_env(environ), ready=ready, on_drain=(runtime.stop,)
            )
            await probes.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.stop)
        try:
            await runtime.run()
        finally:
            if probes is not None:
                await probes.stop()
            await nc.close()
    finally:
        await pool.close()


def main() -> int:
    setup_logging(os.environ.get("PIXELBUS_LOG_LEVEL", "INFO"))
    try:
        environ = with_secret_files(os.environ)
        settings = ComfySettings.from_env(environ)
        templates = load_templates(settings.templates_dir)
    except (SettingsError, TemplateError) as exc:
        print(f"pixelbus-comfy-worker: {exc}", file=sys.stderr)
        return 2
    import uvloop

    uvloop.run(serve(settings, templates, environ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
