"""The ComfyUI servers of one worker: health checks, capacity and routing.

A backend is healthy when its last ``/system_stats`` answered and its WebSocket is
connected; a run that finds it unreachable marks it down at once. Each task goes to the
healthy backend with the most free capacity (``capacity`` prompts per backend at once),
avoiding those the task already failed on when another one is free. ``free_slots()``
says how many more tasks the worker can take; the runtime's pull gate waits on it, so
tasks stay queued in JetStream while no backend is healthy. Each change of a backend's
health is also the gauge ``pixelbus_comfyui_backend_up`` (the backend-down alerts).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from pixelbus.comfy_worker.client import ComfyClient
from pixelbus.comfy_worker.errors import BackendUnavailable, ComfyError
from pixelbus.comfy_worker.stream import PromptStream
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.metrics import process_metrics

__all__ = ["Backend", "BackendPool"]

log = structlog.get_logger("pixelbus.comfy_worker.backends")


@dataclass(eq=False)
class Backend:
    url: str
    client: ComfyClient
    stream: PromptStream
    capacity: int
    in_use: int = 0
    reachable: bool = False
    error: str | None = "not checked yet"
    checked_at: datetime | None = None
    device: str | None = None

    @property
    def healthy(self) -> bool:
        return self.reachable and self.stream.connected

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.in_use) if self.healthy else 0

    def presence(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "socket": self.stream.connected,
            "error": None if self.healthy else (self.error or "websocket disconnected"),
            "in_use": self.in_use,
            "capacity": self.capacity,
            "queue_remaining": self.stream.queue_remaining,
            "device": self.device,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
        }


class BackendPool:
    def __init__(
        self,
        urls: Collection[str],
        *,
        capacity: int,
        http_timeout_s: float = 30.0,
        health_interval_s: float = 5.0,
    ) -> None:
        self.client_id = f"pixelbus-{uuid.uuid4().hex}"
        self._changed = asyncio.Condition()
        self._health_interval_s = health_interval_s
        #: a hung health check must not hold up the next ones
        self._check_timeout_s = max(2.0, min(10.0, 2 * health_interval_s))
        self.backends = [
            Backend(
                url=url,
                client=ComfyClient(url, timeout_s=http_timeout_s),
                stream=PromptStream(url, self.client_id, on_change=self._poke),
                capacity=capacity,
            )
            for url in urls
        ]
        self._health_task: asyncio.Task[None] | None = None
        self._check_now = asyncio.Event()
        self._pokes: set[asyncio.Task[None]] = set()
        self.parked = 0

    async def start(self) -> None:
        for backend in self.backends:
            backend.stream.start()
        await self.check_all()
        await asyncio.gather(*(b.stream.wait_connected(2.0) for b in self.backends if b.reachable))
        await self._notify()
        self._health_task = asyncio.create_task(self._health_loop())
        log.info("comfyui backends", backends=[b.presence() for b in self.backends])

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for backend in self.backends:
            await backend.stream.close()
            await backend.client.aclose()

    # --- health ---

    async def check(self, backend: Backend) -> None:
        try:
            async with asyncio.timeout(self._check_timeout_s):
                stats = await backend.client.system_stats()
        except (ComfyError, TimeoutError) as exc:
            if backend.reachable:
                log.warning("comfyui backend down", url=backend.url, error=str(exc))
            backend.reachable, backend.error = False, str(exc) or type(exc).__name__
        else:
            if not backend.reachable:
                log.info("comfyui backend up", url=backend.url)
            backend.reachable, backend.error = True, None
            devices = stats.get("devices") or [{}]
            backend.device = str(devices[0].get("name")) if devices else None
        backend.checked_at = utcnow()
        _report(backend)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(b) for b in self.backends))
        await self._notify()

    async def _health_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self._health_interval_s)
            self._check_now.clear()
            await self.check_all()

    def mark_down(self, backend: Backend, error: str) -> None:
        """A run found the backend unreachable: take it out of routing until it answers."""
        if backend.reachable:
            log.warning("comfyui backend marked down", url=backend.url, error=error)
        backend.reachable, backend.error = False, error
        backend.checked_at = utcnow()
        _report(backend)
        self._poke()

    def _poke(self) -> None:
        """Something changed (a socket came or went): re-check soon, wake the waiters."""
        for backend in self.backends:
            _report(backend)
        self._check_now.set()
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(self._notify())
            self._pokes.add(task)
            task.add_done_callback(self._pokes.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- routing ---

    def free_slots(self) -> int:
        return sum(b.free for b in self.backends)

    @property
    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    async def wait_free(self) -> int:
        """Wait until a healthy backend has room; how many tasks can be taken now.

        ``parked`` counts the callers waiting (a worker's pull loop parked here has no
        pull request open: its tasks stay in JetStream)."""
        async with self._changed:
            self.parked += 1
            try:
                await self._changed.wait_for(lambda: self.free_slots() > 0)
            finally:
                self.parked -= 1
            return self.free_slots()

    def _pick(self, avoid: Collection[str]) -> Backend | None:
        candidates = [b for b in self.backends if b.free > 0]
        if not candidates:
            return None
        preferred = [b for b in candidates if b.url not in avoid] or candidates
        # most room for us first; then the shortest queue on the server (other clients too)
        return max(preferred, key=lambda b: (b.free, -(b.stream.queue_remaining or 0)))

    @contextlib.asynccontextmanager
    async def acquire(
        self, avoid: Collection[str] = (), *, timeout: float | None = None
    ) -> AsyncIterator[Backend]:
        """A healthy backend with free capacity, held for one task. Waits for one at most
        ``timeout`` seconds, then raises ``BackendUnavailable``."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self._pick(avoid) is not None)
                backend = self._pick(avoid)
                assert backend is not None
                backend.in_use += 1
        except TimeoutError:
            errors = "; ".join(f"{b.url}: {b.error or 'busy'}" for b in self.backends)
            raise BackendUnavailable(
                f"no ComfyUI backend with room within {timeout:g} s ({errors})"
            ) from None
        try:
            yield backend
        finally:
            backend.in_use -= 1
            await self._notify()

    def presence(self) -> dict[str, Any]:
        return {
            "backends": [b.presence() for b in self.backends],
            "backends_healthy": sum(1 for b in self.backends if b.healthy),
        }


def _report(backend: Backend) -> None:
    process_metrics().set_backend_up(backend.url, backend.healthy)
