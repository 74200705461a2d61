"""The shared worker runtime: one consume loop for every worker pool.

A pool is one durable pull consumer; every worker process pulls from it with bounded
concurrency (``concurrency`` slots, and the consumer's ``max_ack_pending`` across all
workers). For each ``TaskCreated`` it:

1. skips the task if it is already final or a cancel was requested (acks, and records
   ``TaskCancelled`` when needed);
2. publishes ``TaskStarted`` (attempt = the delivery count) and keeps the message alive
   with in-progress acks while the handler runs;
3. on success puts the outputs into the Object Store, publishes ``OutputsReady`` and
   acks; on ``Permanent`` publishes ``TaskFailed(final)`` and terms; on ``Retryable`` or
   anything unexpected naks with a delay and publishes ``TaskFailed(retryable)``, or
   ``TaskFailed(final)`` + term once the attempts are spent;
4. on a ``TaskCancelRequested`` for a task it runs, cancels the handler and publishes
   ``TaskCancelled``.

On shutdown it stops pulling, lets in-flight tasks finish for ``grace_s`` and releases
(naks) the rest so another worker takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import trace

from pixelbus.contracts.events import (
    OutputsReady,
    TaskCancelled,
    TaskCancelRequested,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    decode_event,
    event_id,
)
from pixelbus.contracts.subjects import (
    OUTPUTS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    WORKERS_BUCKET,
    Pool,
    event_filter,
    input_object_names,
    sanitize_token,
)
from pixelbus.contracts.task import OutputObject
from pixelbus.contracts.validation import PROBE_WORKFLOW
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.errors import Permanent, Retryable
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import PullFeed, dispatch
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.runtime.tracing import context_from_headers, messaging_attributes, tracer

__all__ = [
    "Handler",
    "OutputFile",
    "PullGate",
    "TaskContext",
    "TaskResult",
    "WorkerRuntime",
    "probe_handler",
]

log = structlog.get_logger("pixelbus.worker")


@dataclass(frozen=True, slots=True)
class OutputFile:
    filename: str
    data: bytes
    content_type: str
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    outputs: list[OutputFile]
    result: dict[str, Any] | None = None


class TaskContext:
    """What a handler sees of its task, and how it reports progress."""

    def __init__(
        self,
        created: TaskCreated,
        attempt: int,
        report: Callable[[float | None, str | None, str | None], Awaitable[None]],
    ) -> None:
        self.created = created
        self.task_id = created.task_id
        self.workflow = created.workflow
        self.environment = created.environment
        self.input_data = created.input_data
        self.attempt = attempt
        self._report = report

    @property
    def wf_json(self) -> dict[str, Any]:
        value = self.input_data.get("wf_json")
        return value if isinstance(value, dict) else {}

    async def progress(
        self, fraction: float | None, *, node: str | None = None, message: str | None = None
    ) -> None:
        """Report progress; coalesced to a few events a second per task."""
        await self._report(fraction, node, message)


Handler = Callable[[TaskContext], Awaitable[TaskResult]]
#: Waits until the worker can take work (e.g. a backend is healthy and has room) and says
#: how many tasks it can take now (at least 1). Nothing is pulled while it waits.
PullGate = Callable[[], Awaitable[int]]


async def probe_handler(ctx: TaskContext) -> TaskResult:
    """The synthetic end-to-end check every pool serves: no work, one tiny output."""
    body = json.dumps({"task_id": ctx.task_id, "probe": "ok", "attempt": ctx.attempt}).encode()
    return TaskResult(outputs=[OutputFile("probe.json", body, "application/json")])


class _GatedFeed(PullFeed):
    """A ``PullFeed`` that asks its gate before each pull, and pulls no more than it allows."""

    def __init__(self, *args: Any, gate: PullGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    async def pull(self, batch: int, stop: asyncio.Event | None = None) -> AsyncIterator[Msg]:
        opened = asyncio.ensure_future(self._gate())
        waits: set[asyncio.Future[Any]] = {opened}
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waits.add(stopper)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if stopper is not None:
            stopper.cancel()
        if not opened.done():
            opened.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened
            return
        async for msg in super().pull(max(1, min(batch, opened.result())), stop):
            yield msg


class _ProgressCoalescer:
    """At most one progress event per ``interval`` per task; the last value always lands."""

    def __init__(
        self,
        send: Callable[[float | None, str | None, str | None, int], Awaitable[None]],
        interval: float,
    ) -> None:
        self._send = send
        self._interval = interval
        self._last_sent = 0.0
        self._seq = 0
        self._pending: tuple[float | None, str | None, str | None] | None = None
        self._flush_task: asyncio.Task[None] | None = None

    async def report(self, fraction: float | None, node: str | None, message: str | None) -> None:
        now = time.monotonic()
        if now - self._last_sent >= self._interval and self._flush_task is None:
            await self._emit((fraction, node, message))
            return
        self._pending = (fraction, node, message)
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _emit(self, values: tuple[float | None, str | None, str | None]) -> None:
        self._last_sent = time.monotonic()
        self._seq += 1
        await self._send(*values, self._seq)

    async def _flush_later(self) -> None:
        await asyncio.sleep(max(0.0, self._last_sent + self._interval - time.monotonic()))
        self._flush_task = None
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._emit(pending)

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._emit(pending)


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    msg: Msg
    cancel_reason: str | None = None
    cancelled_by_request: bool = False


@dataclass
class WorkerRuntime:
    nc: Client
    js: JetStreamContext
    pool: Pool
    handlers: Mapping[str, Handler]
    settings: BusSettings
    concurrency: int = 1
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    grace_s: float = 30.0
    presence_interval_s: float = 5.0
    #: Serves every workflow without a handler of its own (e.g. ComfyUI workflow names).
    default_handler: Handler | None = None
    gate: PullGate | None = None
    #: Extra fields of the presence entry (shown in the gateway's ``/api/health``).
    presence_extra: Callable[[], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        self._handlers: dict[str, Handler] = {PROBE_WORKFLOW: probe_handler, **self.handlers}
        self._publisher = EventPublisher(self.js)
        self._metrics = process_metrics()
        self._inflight: dict[str, _InFlight] = {}
        self._stopping = asyncio.Event()
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None
        self._workers_kv: KeyValue | None = None
        self._ready = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Pull and process tasks until ``stop()``."""
        self._kv = await self.js.key_value(STATE_BUCKET)
        self._objects = await self.js.object_store(OUTPUTS_BUCKET)
        self._workers_kv = await self.js.key_value(WORKERS_BUCKET)
        cancel_sub = await self.nc.subscribe(
            event_filter("cancel_requested", self.pool.environment), cb=self._on_cancel_request
        )
        feed = (
            PullFeed(self.nc, TASK_STREAM, self.pool.durable)
            if self.gate is None
            else _GatedFeed(self.nc, TASK_STREAM, self.pool.durable, gate=self.gate)
        )
        await feed.start()
        presence = asyncio.create_task(self._presence_loop())
        self._ready.set()
        log.info(
            "worker started", pool=self.pool.name, worker=self.worker_id, slots=self.concurrency
        )
        try:
            await dispatch(feed, self._process, concurrency=self.concurrency, stop=self._stopping)
        finally:
            await feed.close()  # first: nothing more is delivered while in-flight work ends
            presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presence
            await self._drain()
            with contextlib.suppress(Exception):
                await cancel_sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self._workers_kv.delete(self._presence_key)
            log.info("worker stopped", pool=self.pool.name, worker=self.worker_id)

    def stop(self) -> None:
        """Stop pulling; ``run()`` returns after in-flight work finished or was released."""
        self._stopping.set()

    @property
    def _presence_key(self) -> str:
        return f"{self.pool.name}.{sanitize_token(self.worker_id)}"

    async def _presence_loop(self) -> None:
        assert self._workers_kv is not None
        while True:
            value = json.dumps(
                {
                    "worker": self.worker_id,
                    "pool": self.pool.name,
                    "workflows": sorted(self._handlers),
                    "in_flight": self.in_flight,
                    "slots": self.concurrency,
                    "at": utcnow().isoformat(),
                    **(self.presence_extra() if self.presence_extra is not None else {}),
                }
            ).encode()
            try:
                await self._workers_kv.put(self._presence_key, value)
            except Exception as exc:
                log.warning("presence update failed", error=str(exc))
            await asyncio.sleep(self.presence_interval_s)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        tasks = [entry.task for entry in self._inflight.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.grace_s)
        for entry in list(self._inflight.values()):
            if entry.task in pending:
                entry.task.cancel()
                with contextlib.suppress(Exception):
                    await entry.msg.nak()
                log.info("released task on shutdown", task_id=self._task_of(entry))
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _task_of(self, entry: _InFlight) -> str | None:
        for task_id, value in self._inflight.items():
            if value is entry:
                return task_id
        return None

    async def _on_cancel_request(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except Exception:
            return
        if not isinstance(event, TaskCancelRequested):
            return
        entry = self._inflight.get(event.task_id)
        if entry is not None and not entry.task.done():
            entry.cancelled_by_request = True
            entry.cancel_reason = event.reason
            entry.task.cancel()

    async def _process(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except Exception as exc:
            log.error("undecodable task message, terminated", error=str(exc))
            await msg.term()
            return
        if not isinstance(event, TaskCreated):
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        headers = dict(msg.headers or {})
        ctx_otel = context_from_headers(headers)
        bound = log.bind(
            task_id=event.task_id, workflow=event.workflow, attempt=attempt, pool=self.pool.name
        )
        with tracer.start_as_current_span(
            f"process {event.workflow}",
            context=ctx_otel,
            kind=trace.SpanKind.CONSUMER,
            attributes=messaging_attributes("process", msg.subject, event.event_id),
        ) as span:
            span.set_attribute("pixelbus.task_id", event.task_id)
            span.set_attribute("pixelbus.attempt", attempt)
            await self._process_traced(msg, event, attempt, bound)

    async def _process_traced(
        self,
        msg: Msg,
        event: TaskCreated,
        attempt: int,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        me = asyncio.current_task()
        assert me is not None
        entry = _InFlight(task=me, msg=msg)
        self._inflight[event.task_id] = entry
        self._metrics.set_in_flight(self.pool.name, len(self._inflight))
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        started = time.monotonic()
        outcome = "error"
        try:
            assert self._kv is not None
            state, _ = await read_state(self._kv, event.task_id)
            if state is not None and state.is_final:
                await msg.ack()
                outcome = "skipped_final"
                return
            if state is not None and state.cancel_requested:
                await self._publish_cancelled(event, state.cancel_reason)
                await msg.ack()
                outcome = "cancelled"
                return
            await self._publish(
                event,
                TaskStarted(
                    event_id=event_id(event.task_id, "started", attempt),
                    task_id=event.task_id,
                    occurred_at=utcnow(),
                    attempt=attempt,
                    worker=self.worker_id,
                ),
            )
            self._metrics.observe_queue_wait(
                event.workflow, (utcnow() - event.occurred_at).total_seconds()
            )
            outcome = await self._run_handler(msg, event, attempt, entry)
        except asyncio.CancelledError:
            if entry.cancelled_by_request:
                await self._publish_cancelled(event, entry.cancel_reason)
                await msg.ack()
                outcome = "cancelled"
            else:
                outcome = "released"
                raise
        except Exception as exc:  # publishing trouble etc.: let it come back
            bound.exception("task processing failed; will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.retry_delay_s)
            outcome = f"nak:{type(exc).__name__}"
        finally:
            heartbeat.cancel()
            self._inflight.pop(event.task_id, None)
            self._metrics.set_in_flight(self.pool.name, len(self._inflight))
            bound.info(
                "task processed", outcome=outcome, seconds=round(time.monotonic() - started, 4)
            )

    async def _run_handler(
        self, msg: Msg, event: TaskCreated, attempt: int, entry: _InFlight
    ) -> str:
        handler = self._handlers.get(event.workflow, self.default_handler)
        coalescer = _ProgressCoalescer(
            lambda fraction, node, message, seq: self._publish(
                event,
                TaskProgress(
                    event_id=event_id(event.task_id, "progress", attempt, seq),
                    task_id=event.task_id,
                    occurred_at=utcnow(),
                    attempt=attempt,
                    fraction=fraction,
                    node=node,
                    message=message,
                ),
            ),
            self.settings.progress_interval_s,
        )
        ctx = TaskContext(event, attempt, coalescer.report)
        try:
            if handler is None:
                raise Permanent(
                    "unknown_workflow",
                    f"workflow {event.workflow!r} is not served by the {self.pool.name} pool "
                    f"(it serves: {', '.join(sorted(self._handlers))})",
                )
            handler_started = time.monotonic()
            result = await handler(ctx)
            self._metrics.observe_duration(
                event.workflow, "handler", time.monotonic() - handler_started
            )
        except Permanent as exc:
            await coalescer.close()
            await self._fail(msg, event, attempt, exc.code, exc.message, retryable=False)
            return f"failed:{exc.code}"
        except Retryable as exc:
            await coalescer.close()
            await self._fail(
                msg, event, attempt, exc.code, exc.message, retryable=True, delay=exc.delay_s
            )
            return f"retry:{exc.code}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await coalescer.close()
            log.exception("handler raised unexpectedly", task_id=event.task_id)
            await self._fail(
                msg,
                event,
                attempt,
                "internal_error",
                f"{type(exc).__name__}: {exc}",
                retryable=True,
            )
            return "retry:internal_error"
        await coalescer.close()
        outputs = await self._store_outputs(event.task_id, result.outputs)
        await self._publish(
            event,
            OutputsReady(
                event_id=event_id(event.task_id, "outputs", attempt),
                task_id=event.task_id,
                occurred_at=utcnow(),
                attempt=attempt,
                outputs=outputs,
                result=result.result,
                input_objects=input_object_names(event.input_data),
            ),
        )
        await msg.ack_sync()
        return "outputs_ready"

    async def _store_outputs(
        self, task_id: str, files: list[OutputFile]
    ) -> tuple[OutputObject, ...]:
        assert self._objects is not None
        stored: list[OutputObject] = []
        for index, file in enumerate(files):
            name = f"{task_id}/{index}-{sanitize_token(file.filename)}"
            await self._objects.put(name, file.data)
            stored.append(
                OutputObject(
                    object_name=name,
                    filename=file.filename,
                    content_type=file.content_type,
                    size=len(file.data),
                    node_id=file.node_id,
                )
            )
        return tuple(stored)

    async def _fail(
        self,
        msg: Msg,
        event: TaskCreated,
        attempt: int,
        code: str,
        message: str,
        *,
        retryable: bool,
        delay: float | None = None,
    ) -> None:
        final = not retryable or attempt >= self.settings.max_deliver
        if retryable and final:
            message = f"{message} (gave up after {attempt} attempts)"
        await self._publish(
            event,
            TaskFailed(
                event_id=event_id(event.task_id, "failed", attempt, final=final),
                task_id=event.task_id,
                occurred_at=utcnow(),
                attempt=attempt,
                code=code,
                message=message,
                retryable=retryable,
                final=final,
            ),
        )
        if final:
            await msg.term()
        else:
            await msg.nak(
                delay=delay if delay is not None else self.settings.retry_delay_s * attempt
            )

    async def _publish_cancelled(self, created: TaskCreated, reason: str | None) -> None:
        await self._publish(
            created,
            TaskCancelled(
                event_id=event_id(created.task_id, "cancelled"),
                task_id=created.task_id,
                occurred_at=utcnow(),
                reason=reason,
            ),
        )

    async def _publish(self, created: TaskCreated, event: Any) -> None:
        await self._publisher.publish(
            event, environment=created.environment, workflow=created.workflow
        )

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(0.2, self.settings.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()
