"""Health, readiness and metrics over HTTP for Kubernetes: one tiny server per process.

``ProbeServer`` listens on its own port (``PIXELBUS_PROBE_PORT``, default 9090), apart
from the gateway's API port, and answers:

- ``GET /healthz`` — liveness: 200 while the event loop runs; 503 once a loop stall longer
  than ``max_loop_lag_s`` was measured (the loop was blocked: restart the pod).
- ``GET /readyz`` — readiness: 200 when the service's own check passes (worker: connected
  to NATS and its durable consumer exists; comfy-worker: at least one ComfyUI backend
  healthy), 503 with the reason otherwise, and 503 for good once draining began.
- ``GET /metrics`` — Prometheus text exposition of the given registry.
- ``GET /drain`` — from the loopback interface only (Kubernetes' ``preStop`` exec hook runs
  ``request_drain()`` inside the pod): readiness turns 503 and the ``on_drain`` callbacks
  run (a worker's ``runtime.stop``: it stops pulling, finishes or releases in-flight work).
  From any other address it answers 403, so the network cannot make a pod stop working.

It is a plain asyncio server (no framework): a request line, headers, no body, one answer,
connection closed. Nothing here reads the environment except ``ProbeSettings.from_env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from pixelbus.runtime.settings import Settings, integer, number, setting

__all__ = [
    "DEFAULT_PROBE_PORT",
    "NotReady",
    "ProbeServer",
    "ProbeSettings",
    "ReadinessCheck",
    "request_drain",
]

log = structlog.get_logger("pixelbus.probes")

DEFAULT_PROBE_PORT = 9090
_MAX_REQUEST_HEAD = 8192


class NotReady(Exception):
    """Raised by a readiness check to say why the service is not ready."""


#: Returns ``True`` when ready; ``False`` or ``NotReady("why")`` when not.
ReadinessCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class ProbeSettings(Settings):
    host: str = setting("PIXELBUS_PROBE_HOST", "0.0.0.0")  # noqa: S104 — the kubelet probes the pod IP
    """address of the probe server"""
    port: int = setting(
        "PIXELBUS_PROBE_PORT",
        DEFAULT_PROBE_PORT,
        integer(0, 65535),
        default_doc="unset: no probe server",
    )
    """every service serves `/healthz`, `/readyz`, `/metrics` and the loopback-only `/drain`
    (preStop) on this port when it is set; the Kubernetes manifests set `9090`"""
    check_timeout_s: float = setting("PIXELBUS_PROBE_CHECK_TIMEOUT_S", 2.0, number(0.1, 60))
    """longest a readiness check may take"""
    max_loop_lag_s: float = setting("PIXELBUS_PROBE_MAX_LOOP_LAG_S", 10.0, number(0.1, 600))
    """`/healthz` fails when the event loop lags more than this"""


async def _always_ready() -> bool:
    return True


class ProbeServer:
    """``/healthz``, ``/readyz``, ``/metrics`` and loopback-only ``/drain`` on one port.

    ``await start()`` binds (``port=0`` picks a free one: see ``.port``); ``await stop()``
    closes it. ``on_drain`` callbacks may be plain functions or coroutine functions.
    """

    def __init__(
        self,
        settings: ProbeSettings | None = None,
        *,
        ready: ReadinessCheck | None = None,
        registry: CollectorRegistry | None = None,
        on_drain: tuple[Callable[[], object], ...] = (),
        tick_s: float = 0.5,
    ) -> None:
        self.settings = settings or ProbeSettings()
        self._ready = ready or _always_ready
        self._registry = registry if registry is not None else REGISTRY
        self._on_drain = on_drain
        self._tick_s = tick_s
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._worst_lag_s = 0.0
        self._draining = asyncio.Event()
        self.port = self.settings.port

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.settings.host, self.settings.port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick())
        log.info("probe server listening", host=self.settings.host, port=self.port)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def drain(self) -> None:
        """Turn readiness off for good and run the ``on_drain`` callbacks (once)."""
        if self._draining.is_set():
            return
        self._draining.set()
        log.info("draining: readiness off, no new work")
        for callback in self._on_drain:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    async def _tick(self) -> None:
        """Measure how late the loop wakes us: a blocked loop shows as a long lag."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(self._tick_s)
            lag = time.monotonic() - before - self._tick_s
            self._worst_lag_s = max(self._worst_lag_s, lag)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_REQUEST_HEAD:
                await _answer(writer, 431, "request head too large\n")
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                await _answer(writer, 400, "bad request line\n")
                return
            method, target, _ = parts
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _answer(writer, 405, "method not allowed\n", head_only=False)
                return
            status, body, content_type = await self._route(path, writer)
            await _answer(writer, status, body, content_type, head_only=method == "HEAD")
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, path: str, writer: asyncio.StreamWriter) -> tuple[int, str | bytes, str]:
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            if self._worst_lag_s > self.settings.max_loop_lag_s:
                return 503, f"event loop stalled for {self._worst_lag_s:.1f}s\n", text
            return 200, "ok\n", text
        if path == "/readyz":
            if self.draining:
                return 503, "draining\n", text
            ok, reason = await self._check_ready()
            return (200, "ready\n", text) if ok else (503, f"not ready: {reason}\n", text)
        if path == "/metrics":
            return 200, generate_latest(self._registry), CONTENT_TYPE_LATEST
        if path == "/drain":
            if not _is_loopback(writer.get_extra_info("peername")):
                return 403, "drain is accepted from the loopback interface only\n", text
            await self.drain()
            return 200, "draining\n", text
        return 404, "not found\n", text

    async def _check_ready(self) -> tuple[bool, str]:
        try:
            ok = await asyncio.wait_for(self._ready(), self.settings.check_timeout_s)
        except NotReady as exc:
            return False, str(exc) or "check failed"
        except TimeoutError:
            return False, f"check took longer than {self.settings.check_timeout_s}s"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return (True, "") if ok else (False, "check failed")


def _is_loopback(peer: object) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        return ipaddress.ip_address(str(peer[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def _answer(
    writer: asyncio.StreamWriter,
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> None:
    data = body.encode() if isinstance(body, str) else body
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head if head_only else head + data)
    await writer.drain()


def request_drain(
    port: int = DEFAULT_PROBE_PORT, *, linger_s: float = 0.0, timeout_s: float = 5.0
) -> int:
    """Ask the process in this pod to drain (the ``preStop`` hook); returns the HTTP status.

    ``python -c 'from pixelbus.runtime.probes import request_drain; request_drain()'``.
    ``linger_s`` then keeps the hook open so that the Service's endpoints drop the pod
    before the kubelet sends SIGTERM (the gateway: requests in flight still land).
    """
    url = f"http://127.0.0.1:{port}/drain"
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        status = int(answer.status)
    if linger_s > 0:
        time.sleep(linger_s)  # the hook's purpose: hold SIGTERM back while endpoints update
    return status
