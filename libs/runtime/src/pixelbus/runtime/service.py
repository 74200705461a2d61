"""The process shell every pixelbus service shares.

``run_service`` is a service's ``main()``: logging, settings read once from the
environment (a bad one stops the start with one line naming it, exit code 2), then the
service's ``serve`` coroutine on uvloop. ``service_shell`` wraps ``serve``'s body:
tracing, SIGTERM/SIGINT handlers that call the service's ``stop``, and — when
``PIXELBUS_PROBE_PORT`` is set, as the Kubernetes manifests do — the probe server with
``/healthz``, ``/readyz`` (the service's own check), ``/metrics`` and the preStop drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.logging import setup_logging
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.probes import NotReady, ProbeServer, ProbeSettings, ReadinessCheck
from pixelbus.runtime.settings import with_secret_files
from pixelbus.runtime.tracing import setup_tracing

__all__ = ["consumer_ready", "run_service", "service_shell"]

S = TypeVar("S")


def run_service(
    name: str,
    load_settings: Callable[[Mapping[str, str]], S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
) -> int:
    """Read the settings, then run ``serve(settings)`` until it returns; the exit code."""
    setup_logging(
        os.environ.get("PIXELBUS_LOG_LEVEL", "INFO"), os.environ.get("PIXELBUS_LOG_FORMAT")
    )
    try:
        settings = load_settings(with_secret_files(os.environ))
    except (SettingsError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    import uvloop

    try:
        uvloop.run(serve(settings))
    except SettingsError as exc:  # found while starting (e.g. a model file missing)
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    return 0


@contextlib.asynccontextmanager
async def service_shell(
    name: str,
    *,
    stop: Callable[[], object],
    ready: ReadinessCheck,
    stop_on_drain: bool = True,
) -> AsyncIterator[ProbeServer | None]:
    """Tracing, signals that call ``stop``, and the probe server while the body runs.

    A drain (Kubernetes' ``preStop``) turns readiness off and, with ``stop_on_drain``,
    calls ``stop`` (a consumer takes no new work); the gateway keeps serving while it
    drains, until Kubernetes has taken it out of the endpoints and sends SIGTERM."""
    setup_tracing(name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    probes: ProbeServer | None = None
    if os.environ.get("PIXELBUS_PROBE_PORT"):
        probes = ProbeServer(
            ProbeSettings.from_env(os.environ),
            ready=ready,
            registry=process_metrics().registry,
            on_drain=(stop,) if stop_on_drain else (),
        )
        await probes.start()
    try:
        yield probes
    finally:
        if probes is not None:
            await probes.stop()


def consumer_ready(nc: Client, stream: str, durable: str) -> ReadinessCheck:
    """Ready while connected to NATS and the durable consumer this service pulls exists."""

    async def check() -> bool:
        if not nc.is_connected:
            raise NotReady("not connected to NATS")
        try:
            await nc.jetstream().consumer_info(stream, durable)
        except NotFoundError:
            raise NotReady(f"consumer {durable} of stream {stream} does not exist") from None
        return True

    return check
