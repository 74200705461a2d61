"""The shared worker runtime: one consume loop for every worker pool.

A pool is one durable pull consumer; every worker process streams from it with bounded
concurrency (``concurrency`` slots, and the consumer's ``max_ack_pending`` across all
workers). For each ``TaskCreated`` it:

1. reads the task's state first only where that can change the outcome: a redelivery, a
   cancel request seen for the task, or a task created before this worker was listening
   for cancel requests (at start, after a reconnect). A final or cancelled task is
   acked (and ``TaskCancelled`` recorded when needed) without running;
2. publishes ``TaskStarted`` (attempt = the delivery count) while the handler runs, and
   keeps the message alive with in-progress acks;
3. on success publishes ``OutputsReady`` — outputs up to ``inline_output_bytes`` in all
   travel inline in the event, larger ones go to the Object Store (concurrently) — and
   acks; on a permanent ``PixelbusError`` (any domain error, e.g. ``Permanent``) publishes
   ``TaskFailed(final)`` and terms; on a retryable one or anything unexpected naks with a
   delay and publishes ``TaskFailed(retryable)``, or ``TaskFailed(final)`` + term once the
   attempts are spent;
4. on a ``TaskCancelRequested`` for a task it runs, cancels the handler and publishes
   ``TaskCancelled``.

Acks are plain (not double): a lost ack redelivers the task, and a redelivery reads the
state first and republishes events with the same ids, which JetStream de-duplicates.

On shutdown it stops pulling, lets in-flight tasks finish for ``grace_s`` and releases
(naks) the rest so another worker takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    TaskCancelRequested,
    TaskCreated,
    decode_event,
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
from pixelbus.runtime.errors import Permanent, PixelbusError, Retryable
from pixelbus.runtime.lifecycle import Before, TaskEvents, after_failure, before_run
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import PullConsumer, PullGate, dispatch, keep_alive
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.runtime.tracing import (
    context_from_headers,
    messaging_attributes,
    tracer,
    tracing_on,
)

__all__ = [
    "DEFERRED",
    "Handler",
    "OutputFile",
    "TaskContext",
    "TaskResult",
    "WorkerRuntime",
    "pack_outputs",
    "probe_handler",
]

log = structlog.get_logger("pixelbus.worker")


@dataclass(frozen=True, slots=True)
class OutputFile:
    filename: str
    data: bytes
    content_type: str
    node_id: str | None = None


async def pack_outputs(
    objects: ObjectStore, task_id: str, files: Sequence[OutputFile], inline_bytes: int
) -> tuple[OutputObject, ...]:
    """The outputs as ``OutputsReady`` carries them: inline while they fit in
    ``inline_bytes`` (in all, in order), the rest put into the Object Store together."""
    budget = inline_bytes
    outputs: list[OutputObject] = []
    puts = []
    for index, file in enumerate(files):
        name = f"{task_id}/{index}-{sanitize_token(file.filename)}"
        inline = len(file.data) <= budget
        if inline:
            budget -= len(file.data)
        else:
            puts.append(objects.put(name, file.data))
        outputs.append(
            OutputObject(
                object_name=name,
                filename=file.filename,
                content_type=file.content_type,
                size=len(file.data),
                node_id=file.node_id,
                data=file.data if inline else None,
            )
        )
    if puts:
        await asyncio.gather(*puts)
    return tuple(outputs)


@dataclass(frozen=True, slots=True)
class TaskResult:
    outputs: list[OutputFile]
    result: dict[str, Any] | None = None
    #: The task goes on elsewhere (a video fanned out in chunks, whose assembler publishes
    #: the outputs): the worker acks it and publishes nothing more for it.
    deferred: bool = False


#: What a handler returns when it handed its task on (see ``TaskResult.deferred``).
DEFERRED = TaskResult(outputs=[], deferred=True)


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

#: Cancel requests remembered for tasks this worker is not running (yet).
_CANCELS_REMEMBERED = 10_000


async def probe_handler(ctx: TaskContext) -> TaskResult:
    """The synthetic end-to-end check every pool serves: no work, one tiny output."""
    body = json.dumps({"task_id": ctx.task_id, "probe": "ok", "attempt": ctx.attempt}).encode()
    return TaskResult(outputs=[OutputFile("probe.json", body, "application/json")])


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
        await self._emit_pending()

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        await self._emit_pending()

    async def _emit_pending(self) -> None:
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
        self._retry = self.settings.retry_policy()
        self._metrics = process_metrics()
        self._inflight: dict[str, _InFlight] = {}
        self._cancels_seen: OrderedDict[str, str | None] = OrderedDict()
        #: Tasks stored after this stream sequence were created while this worker heard
        #: every cancel request (``None``: not known, e.g. just after a reconnect).
        self._heard_after_seq: int | None = None
        self._reconnects = 0
        self._refreshing: asyncio.Task[None] | None = None
        self._consumer: PullConsumer | None = None
        self._stopping = False
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None
        self._workers_kv: KeyValue | None = None
        self._ready = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

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
        self._reconnects = self.nc.stats.get("reconnects", 0)
        await self._note_listening()
        consumer = PullConsumer(
            self.nc, TASK_STREAM, self.pool.durable, credit=self.concurrency, gate=self.gate
        )
        self._consumer = consumer
        await consumer.start()
        if self._stopping:
            consumer.stop()
        await self._announce()  # counted by the time we say we are ready
        presence = asyncio.create_task(self._presence_loop())
        self._ready.set()
        log.info(
            "worker started", pool=self.pool.name, worker=self.worker_id, slots=self.concurrency
        )
        try:
            await dispatch(consumer, self._process)
        finally:
            await consumer.close()  # first: nothing more is delivered while in-flight work ends
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
        self._stopping = True
        if self._consumer is not None:
            self._consumer.stop()

    @property
    def _presence_key(self) -> str:
        return f"{self.pool.name}.{sanitize_token(self.worker_id)}"

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.presence_interval_s)
            await self._announce()

    async def _announce(self) -> None:
        """Write this worker's presence (``/api/health`` counts the pool's workers)."""
        assert self._workers_kv is not None
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

    async def _drain(self) -> None:
        if not self._inflight:
            return
        tasks = [entry.task for entry in self._inflight.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.grace_s)
        for task_id, entry in list(self._inflight.items()):
            if entry.task in pending:
                entry.task.cancel()
                with contextlib.suppress(Exception):
                    await entry.msg.nak()
                log.info("released task on shutdown", task_id=task_id)
        if pending:
            await asyncio.wait(pending, timeout=5)

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
            return
        # Not running here (yet): when its turn comes, its state is read first.
        self._cancels_seen[event.task_id] = event.reason
        if len(self._cancels_seen) > _CANCELS_REMEMBERED:
            self._cancels_seen.popitem(last=False)

    async def _note_listening(self) -> None:
        """From now on every cancel request reaches us: remember the stream's position."""
        await self.nc.flush()  # the server has our subscription
        info = await self.js.stream_info(TASK_STREAM)
        self._heard_after_seq = info.state.last_seq

    async def _refresh_listening(self) -> None:
        try:
            await self._note_listening()
        except Exception as exc:  # until it works, every task's state is read first
            log.warning("stream position unknown after a reconnect", error=str(exc))

    def _must_read_state(self, msg: Msg, event: TaskCreated, attempt: int) -> bool:
        """Whether the task's state may say "do not run": only a redelivery, a cancel
        request seen for it, or a task stored before this worker listened for cancel
        requests (at start, or before a reconnect, whose gap may have hidden one)."""
        if attempt > 1 or event.task_id in self._cancels_seen:
            return True
        reconnects = self.nc.stats.get("reconnects", 0)
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self._heard_after_seq = None
        heard_after = self._heard_after_seq
        if heard_after is None and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_listening())
        return heard_after is None or msg.metadata.sequence.stream <= heard_after

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
        if not tracing_on():
            await self._process_task(msg, event, attempt)
            return
        with tracer.start_as_current_span(
            f"process {event.workflow}",
            context=context_from_headers(dict(msg.headers or {})),
            kind=trace.SpanKind.CONSUMER,
            attributes=messaging_attributes("process", msg.subject, event.event_id),
        ) as span:
            span.set_attribute("pixelbus.task_id", event.task_id)
            span.set_attribute("pixelbus.attempt", attempt)
            await self._process_task(msg, event, attempt)

    async def _process_task(self, msg: Msg, event: TaskCreated, attempt: int) -> None:
        me = asyncio.current_task()
        assert me is not None
        entry = _InFlight(task=me, msg=msg)
        self._inflight[event.task_id] = entry
        self._metrics.set_in_flight(self.pool.name, len(self._inflight))
        events = TaskEvents(event.task_id, attempt, utcnow)
        started = time.monotonic()
        outcome = "error"
        try:
            with keep_alive(msg, max(0.2, self.settings.ack_wait_for(self.pool.name) / 3)):
                outcome = await self._attempt(msg, event, events, entry)
        except asyncio.CancelledError:
            if entry.cancelled_by_request:
                await self._publish(event, events.cancelled(entry.cancel_reason))
                await msg.ack()
                outcome = "cancelled"
            else:
                outcome = "released"
                raise
        except Exception as exc:  # publishing trouble etc.: let it come back
            log.exception(
                "task processing failed; will be redelivered",
                task_id=event.task_id,
                attempt=attempt,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._retry.delay_s(attempt, random.random()))
            outcome = f"nak:{type(exc).__name__}"
        finally:
            self._inflight.pop(event.task_id, None)
            self._metrics.set_in_flight(self.pool.name, len(self._inflight))
            log.debug(
                "task processed",
                task_id=event.task_id,
                workflow=event.workflow,
                attempt=attempt,
                pool=self.pool.name,
                outcome=outcome,
                seconds=round(time.monotonic() - started, 4),
            )

    async def _attempt(
        self, msg: Msg, event: TaskCreated, events: TaskEvents, entry: _InFlight
    ) -> str:
        if self._must_read_state(msg, event, events.attempt):
            assert self._kv is not None
            state, _ = await read_state(self._kv, event.task_id)
            before = before_run(state)
            if before is Before.SKIP:
                await msg.ack()
                return "skipped_final"
            if before is Before.CANCEL:
                assert state is not None
                await self._publish(event, events.cancelled(state.cancel_reason))
                await msg.ack()
                return "cancelled"
        self._metrics.observe_queue_wait(
            event.workflow, (utcnow() - event.occurred_at).total_seconds()
        )
        # Published while the handler runs; its ack is awaited with the outcome's event.
        started = asyncio.ensure_future(self._publish(event, events.started(self.worker_id)))
        try:
            return await self._run_handler(msg, event, events, started)
        finally:
            if not started.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(started)

    async def _run_handler(
        self, msg: Msg, event: TaskCreated, events: TaskEvents, started: asyncio.Future[Any]
    ) -> str:
        handler = self._handlers.get(event.workflow, self.default_handler)
        coalescer = _ProgressCoalescer(
            lambda fraction, node, message, seq: self._publish(
                event, events.progress(seq, fraction, node, message)
            ),
            self.settings.progress_interval_s,
        )
        ctx = TaskContext(event, events.attempt, coalescer.report)
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
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await coalescer.close()
            if not isinstance(exc, PixelbusError):
                log.exception("handler raised unexpectedly", task_id=event.task_id)
                exc = Retryable("internal_error", f"{type(exc).__name__}: {exc}")
            settle = after_failure(
                self._retry,
                events.attempt,
                retryable=exc.retryable,
                draw=random.random(),
                asked_delay_s=exc.delay_s,
            )
            await self._publish(
                event,
                events.failed(exc.code, exc.message, retryable=exc.retryable, final=settle.final),
            )
            if settle.final:
                await msg.term()
            else:
                await msg.nak(delay=settle.delay_s)
            return f"{'retry' if exc.retryable else 'failed'}:{exc.code}"
        await coalescer.close()
        if result.deferred:
            await started
            await msg.ack()
            return "deferred"
        assert self._objects is not None
        outputs = await pack_outputs(
            self._objects, event.task_id, result.outputs, self.settings.inline_output_bytes
        )
        # awaited in place (a gather would make it a task: one more loop turn)
        await self._publish(
            event, events.outputs(outputs, result.result, input_object_names(event.input_data))
        )
        await started
        await msg.ack()
        return "outputs_ready"

    async def _publish(self, created: TaskCreated, event: Any) -> None:
        await self._publisher.publish(
            event, environment=created.environment, workflow=created.workflow
        )
