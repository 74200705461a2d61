"""Remote agent mode: the worker outside the cluster, with no NATS of its own.

It leases tasks from the gateway (``GET /api/comm/task/fetch``), runs them with the same
handler as in the cluster, keeps the lease alive by reporting progress (every
``heartbeat_s`` at least: each report is an in-progress ack on the gateway's side), and
ends the lease with ``/complete`` (outputs uploaded through the gateway as base64, so they
reach storage through the uploader like any worker's) or ``/fail`` (retryable or not).
A lease the gateway no longer honours (409: it expired, or the task was cancelled) stops
the run, which withdraws the prompt from ComfyUI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from pixelbus.comfy_worker.backends import BackendPool
from pixelbus.comfy_worker.settings import AgentSettings
from pixelbus.contracts.events import TaskCreated
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.errors import PixelbusError
from pixelbus.runtime.worker import Handler, TaskContext, TaskResult

__all__ = ["LeaseLost", "RemoteAgent"]

log = structlog.get_logger("pixelbus.comfy_worker.agent")


class LeaseLost(Exception):
    """The gateway refused the lease token (expired, re-leased or cancelled)."""


@dataclass
class _Progress:
    fraction: float | None = None
    node: str | None = None
    message: str | None = None


class RemoteAgent:
    def __init__(
        self,
        settings: AgentSettings,
        handler: Handler,
        pool: BackendPool,
        *,
        concurrency: int,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._pool = pool
        self._slots = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self._http = http or httpx.AsyncClient(
            base_url=settings.gateway_url,
            timeout=httpx.Timeout(settings.poll_wait_s + 30),
            trust_env=False,
            headers=headers,
        )
        self._own_http = http is None
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self.completed = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        log.info("remote agent started", gateway=self._settings.gateway_url)
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                try:
                    task = await self._next_task()
                except BaseException:
                    self._slots.release()
                    raise
                if task is None:
                    self._slots.release()
                    continue
                job = asyncio.create_task(self._process(task))
                self._running.add(job)
                job.add_done_callback(self._running.discard)
        finally:
            if self._running:
                await asyncio.wait(self._running, timeout=30)
            if self._own_http:
                await self._http.aclose()

    async def _next_task(self) -> dict[str, Any] | None:
        """One leased task, or None (nothing came, stopping, or the gateway failed)."""
        stopper = asyncio.ensure_future(self._stopping.wait())
        room = asyncio.ensure_future(self._pool.wait_free())
        await asyncio.wait({stopper, room}, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping.is_set():
            room.cancel()
            return None
        stopper.cancel()
        params: dict[str, str | float] = {
            "environment": "comm",
            "wait": self._settings.poll_wait_s,
            "consumer": self._settings.name,
        }
        try:
            fetch = asyncio.ensure_future(self._http.get("/api/comm/task/fetch", params=params))
            stopper = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()  # no lease is handed out to a request that went away
                return None
            stopper.cancel()
            response = fetch.result()
        except httpx.HTTPError as exc:
            log.warning("task fetch failed", error=str(exc))
            await asyncio.sleep(1.0)
            return None
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            log.warning("task fetch refused", status=response.status_code, body=response.text[:200])
            await asyncio.sleep(1.0)
            return None
        body: dict[str, Any] = response.json()
        return body

    async def _process(self, task: dict[str, Any]) -> None:
        try:
            await self._lease(task)
        finally:
            self._slots.release()

    async def _lease(self, task: dict[str, Any]) -> None:
        task_id = str(task["taskId"])
        token = str(task["lease"]["token"])
        created = TaskCreated(
            event_id=f"{task_id}:created",
            task_id=task_id,
            occurred_at=utcnow(),
            workflow=str(task.get("workflow")),
            environment=str(task.get("environment")),
            input_data=(task.get("params") or {}).get("input_data") or {},
        )
        latest = _Progress()
        changed = asyncio.Event()

        async def report(fraction: float | None, node: str | None, message: str | None) -> None:
            latest.fraction, latest.node, latest.message = fraction, node, message
            changed.set()

        ctx = TaskContext(created, int(task.get("attempt") or 1), report)
        work: asyncio.Task[TaskResult] = asyncio.ensure_future(self._handler(ctx))
        beat = asyncio.create_task(self._heartbeat(task_id, token, latest, changed, work))
        bound = log.bind(task_id=task_id, workflow=created.workflow)
        try:
            result = await work
        except asyncio.CancelledError:
            bound.info("task stopped: lease lost")
            return
        except PixelbusError as exc:
            await self._end(
                task_id, "fail", token, code=exc.code, message=exc.message, retryable=exc.retryable
            )
            bound.info("task given back" if exc.retryable else "task failed", code=exc.code)
            return
        except Exception as exc:
            bound.exception("handler raised unexpectedly")
            await self._end(
                task_id,
                "fail",
                token,
                code="internal_error",
                message=f"{type(exc).__name__}: {exc}",
                retryable=True,
            )
            return
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        outputs = [
            {
                "filename": f.filename,
                "content_type": f.content_type,
                "data_base64": base64.b64encode(f.data).decode(),
                "node_id": f.node_id,
            }
            for f in result.outputs
        ]
        status = await self._end(task_id, "complete", token, outputs=outputs, result=result.result)
        if status in (413, 422):  # too many or too large outputs for the gateway: say so
            size = sum(len(f.data) for f in result.outputs)
            await self._end(
                task_id,
                "fail",
                token,
                code="outputs_refused",
                message=f"the gateway refused the {len(outputs)} output(s) ({size} bytes, "
                f"HTTP {status}); remote agents hand outputs over in one request",
            )
            bound.warning("outputs refused by the gateway", status=status)
            return
        self.completed += 1
        bound.info("task completed", outputs=len(outputs))

    async def _heartbeat(
        self,
        task_id: str,
        token: str,
        latest: _Progress,
        changed: asyncio.Event,
        work: asyncio.Task[Any],
    ) -> None:
        """Report progress when it changes (at most 4 a second) and every ``heartbeat_s``;
        a refused lease cancels the work."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._settings.heartbeat_s)
            changed.clear()
            body = {
                "lease_token": token,
                "fraction": latest.fraction,
                "node": latest.node,
                "message": latest.message,
            }
            try:
                response = await self._http.post(f"/api/comm/task/{task_id}/progress", json=body)
            except httpx.HTTPError as exc:
                log.warning("progress report failed", task_id=task_id, error=str(exc))
            else:
                if response.status_code in (403, 409):
                    log.warning("lease lost", task_id=task_id, answer=response.text[:200])
                    work.cancel()
                    return
            await asyncio.sleep(0.25)

    async def _end(self, task_id: str, action: str, token: str, **body: Any) -> int | None:
        """Post ``complete``/``fail`` (retrying transport trouble and 5xx); the status."""
        if "message" in body:  # the gateway's limits on a failure
            body["message"] = str(body["message"])[:4000]
            body["code"] = str(body.get("code", "consumer_error"))[:100]
        for attempt in range(5):
            try:
                response = await self._http.post(
                    f"/api/comm/task/{task_id}/{action}", json={"lease_token": token, **body}
                )
            except httpx.HTTPError as exc:
                log.warning(f"{action} failed", task_id=task_id, error=str(exc))
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code >= 500:
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code != 200:
                log.warning(f"{action} refused", task_id=task_id, answer=response.text[:300])
            return response.status_code
        return None
