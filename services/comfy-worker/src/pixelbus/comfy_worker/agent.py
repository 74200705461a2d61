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
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from pixelbus.client import ApiError, AsyncClient, LeasedTask, Output, Unreachable
from pixelbus.comfy_worker.backends import BackendPool
from pixelbus.comfy_worker.settings import AgentSettings
from pixelbus.contracts.events import TaskCreated
from pixelbus.contracts.subjects import COMFY_ENVIRONMENT
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.errors import PixelbusError
from pixelbus.runtime.worker import Handler, TaskContext, TaskResult

__all__ = ["RemoteAgent"]

log = structlog.get_logger("pixelbus.comfy_worker.agent")


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
        client: AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._pool = pool
        self._slots = asyncio.Semaphore(concurrency)
        self._client = client or AsyncClient(
            settings.gateway_url,
            api_key=settings.token,
            timeout=settings.poll_wait_s + 30,
            trust_env=False,
        )
        self._own_client = client is None
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

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
                job = asyncio.create_task(self._lease(task))
                self._running.add(job)
                job.add_done_callback(self._running.discard)
                job.add_done_callback(lambda _: self._slots.release())
        finally:
            if self._running:
                await asyncio.wait(self._running, timeout=30)
            if self._own_client:
                await self._client.aclose()

    async def _next_task(self) -> LeasedTask | None:
        """One leased task, or None (nothing came, stopping, or the gateway failed)."""
        stopper = asyncio.ensure_future(self._stopping.wait())
        room = asyncio.ensure_future(self._pool.wait_free())
        await asyncio.wait({stopper, room}, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping.is_set():
            room.cancel()
            return None
        stopper.cancel()
        try:
            fetch = asyncio.ensure_future(
                self._client.fetch_task(
                    environment=COMFY_ENVIRONMENT,
                    wait=self._settings.poll_wait_s,
                    consumer=self._settings.name,
                )
            )
            stopper = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()  # no lease is handed out to a request that went away
                return None
            stopper.cancel()
            return fetch.result()
        except Unreachable as exc:
            log.warning("task fetch failed", error=str(exc))
        except ApiError as exc:
            log.warning("task fetch refused", status=exc.status, body=str(exc.detail)[:200])
        await asyncio.sleep(1.0)
        return None

    async def _lease(self, lease: LeasedTask) -> None:
        task_id = lease.task_id
        created = TaskCreated(
            event_id=f"{task_id}:created",
            task_id=task_id,
            occurred_at=utcnow(),
            workflow=lease.workflow,
            environment=lease.environment,
            input_data=lease.input_data,
        )
        latest = _Progress()
        changed = asyncio.Event()

        async def report(fraction: float | None, node: str | None, message: str | None) -> None:
            latest.fraction, latest.node, latest.message = fraction, node, message
            changed.set()

        ctx = TaskContext(created, lease.attempt, report)
        work: asyncio.Task[TaskResult] = asyncio.ensure_future(self._handler(ctx))
        beat = asyncio.create_task(self._heartbeat(lease, latest, changed, work))
        bound = log.bind(task_id=task_id, workflow=created.workflow)
        failure: tuple[str, str, bool] | None = None  # code, message, retryable
        try:
            result = await work
        except asyncio.CancelledError:
            bound.info("task stopped: lease lost")
            return
        except PixelbusError as exc:  # any domain error: its code and retryable decide
            failure = (exc.code, exc.message, exc.retryable)
        except Exception as exc:
            bound.exception("handler raised unexpectedly")
            failure = ("internal_error", f"{type(exc).__name__}: {exc}", True)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if failure is not None:
            code, message, retryable = failure
            await self._end(
                lease,
                "fail",
                lambda: self._client.fail_task(lease, message, code=code, retryable=retryable),
            )
            bound.info("task given back" if retryable else "task failed", code=code)
            return
        outputs = [
            Output(f.filename, f.data, content_type=f.content_type, node_id=f.node_id)
            for f in result.outputs
        ]
        answer = result.result
        status = await self._end(
            lease, "complete", lambda: self._client.complete_task(lease, outputs, result=answer)
        )
        if status in (413, 422):  # too many or too large outputs for the gateway: say so
            size = sum(len(f.data) for f in result.outputs)
            refused = (
                f"the gateway refused the {len(outputs)} output(s) ({size} bytes, "
                f"HTTP {status}); remote agents hand outputs over in one request"
            )
            await self._end(
                lease,
                "fail",
                lambda: self._client.fail_task(lease, refused, code="outputs_refused"),
            )
            bound.warning("outputs refused by the gateway", status=status)
            return
        bound.info("task completed", outputs=len(outputs))

    async def _heartbeat(
        self,
        lease: LeasedTask,
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
            try:
                await self._client.report_progress(
                    lease, fraction=latest.fraction, node=latest.node, message=latest.message
                )
            except Unreachable as exc:
                log.warning("progress report failed", task_id=lease.task_id, error=str(exc))
            except ApiError as exc:
                if exc.status in (403, 409):
                    log.warning("lease lost", task_id=lease.task_id, answer=str(exc)[:200])
                    work.cancel()
                    return
                log.warning("progress report refused", task_id=lease.task_id, status=exc.status)
            await asyncio.sleep(0.25)

    async def _end(
        self, lease: LeasedTask, action: str, send: Callable[[], Awaitable[object]]
    ) -> int | None:
        """``complete``/``fail`` (``send``), retrying transport trouble and 5xx: the
        answer's status (None: no answer after five tries)."""
        for attempt in range(5):
            try:
                await send()
            except Unreachable as exc:
                log.warning(f"{action} failed", task_id=lease.task_id, error=str(exc))
            except ApiError as exc:
                if exc.status < 500:
                    log.warning(f"{action} refused", task_id=lease.task_id, answer=str(exc)[:300])
                    return exc.status
            else:
                return 200
            await asyncio.sleep(0.5 * (attempt + 1))
        return None
