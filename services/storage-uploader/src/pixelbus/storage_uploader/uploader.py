"""The storage uploader: ``OutputsReady`` → provider → ``TaskCompleted`` with public URLs.

The only service that writes to external storage. Keys are deterministic
(``output_key``), so a redelivered ``OutputsReady`` overwrites instead of duplicating,
and ``TaskCompleted`` has one id per task, so it is stored once. The Object Store
entries are removed once the completion is recorded (their bucket TTL is the backstop).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import trace

from pixelbus.contracts.events import (
    OutputsReady,
    TaskCompleted,
    TaskFailed,
    decode_event,
    event_id,
)
from pixelbus.contracts.subjects import (
    OUTPUTS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    UPLOADER_CONSUMER,
)
from pixelbus.contracts.task import OutputObject, StoredOutput
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import PullFeed, dispatch
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.runtime.tracing import context_from_headers, tracer
from pixelbus.storage_uploader.errors import StorageError
from pixelbus.storage_uploader.providers.base import StorageProvider, output_key

__all__ = ["Uploader"]

log = structlog.get_logger("pixelbus.storage_uploader")


class _MissingObject(Exception):
    pass


class Uploader:
    def __init__(
        self,
        nc: Client,
        provider: StorageProvider,
        settings: BusSettings,
        *,
        concurrency: int = 32,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._provider = provider
        self._settings = settings
        self._concurrency = concurrency
        self._publisher = EventPublisher(self._js)
        self._stopping = asyncio.Event()
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None
        self._reader = ObjectReader(self._js, OUTPUTS_BUCKET)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self._kv = await self._js.key_value(STATE_BUCKET)
        self._objects = await self._js.object_store(OUTPUTS_BUCKET)
        feed = PullFeed(self._nc, TASK_STREAM, UPLOADER_CONSUMER)
        await feed.start()
        log.info("storage-uploader started", provider=self._provider.name)
        try:
            running = await dispatch(
                feed, self._handle, concurrency=self._concurrency, stop=self._stopping
            )
            await feed.close()
            if running:
                await asyncio.wait(running, timeout=30)
        finally:
            await feed.close()

    async def _handle(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except Exception as exc:
            log.error("undecodable message terminated", error=str(exc))
            await msg.term()
            return
        if not isinstance(event, OutputsReady):
            await msg.term()
            return
        # Subject: pixelbus.tasks.<environment>.<workflow>.outputs.<task id>
        _, _, environment, workflow, *_ = msg.subject.split(".")
        context = context_from_headers(dict(msg.headers or {}))
        with tracer.start_as_current_span(
            "upload outputs", context=context, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("pixelbus.task_id", event.task_id)
            try:
                await self._upload(msg, event, environment, workflow)
            except Exception:  # the bus itself failed us: let the message come back
                log.exception("upload step failed; will be redelivered", task_id=event.task_id)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._settings.retry_delay_s)

    async def _upload(self, msg: Msg, event: OutputsReady, environment: str, workflow: str) -> None:
        assert self._kv is not None and self._objects is not None
        attempt = msg.metadata.num_delivered
        bound = log.bind(task_id=event.task_id, attempt=attempt, provider=self._provider.name)
        started = time.monotonic()
        state, _ = await read_state(self._kv, event.task_id)
        if state is not None and state.is_final:
            await msg.ack()
            await self._cleanup(event)
            bound.info("outputs skipped: task already final", outcome="skipped")
            return
        try:
            stored = [await self._store(event.task_id, out) for out in event.outputs]
        except StorageError as exc:
            final = not exc.retryable or attempt >= self._settings.max_deliver
            await self._publisher.publish(
                TaskFailed(
                    event_id=event_id(event.task_id, "upload-failed", attempt, final=final),
                    task_id=event.task_id,
                    occurred_at=utcnow(),
                    attempt=event.attempt,
                    code=exc.code,
                    message=str(exc),
                    retryable=exc.retryable,
                    final=final,
                ),
                environment=environment,
                workflow=workflow,
            )
            if final:
                await msg.term()
            else:
                await msg.nak(delay=self._settings.retry_delay_s * attempt)
            bound.warning("upload failed", outcome="final" if final else "retry", error=str(exc))
            return
        except _MissingObject as exc:
            await self._publisher.publish(
                TaskFailed(
                    event_id=event_id(event.task_id, "failed", event.attempt, final=True),
                    task_id=event.task_id,
                    occurred_at=utcnow(),
                    attempt=event.attempt,
                    code="output_missing",
                    message=str(exc),
                    retryable=False,
                    final=True,
                ),
                environment=environment,
                workflow=workflow,
            )
            await msg.term()
            return
        await self._publisher.publish(
            TaskCompleted(
                event_id=event_id(event.task_id, "completed"),
                task_id=event.task_id,
                occurred_at=utcnow(),
                attempt=event.attempt,
                outputs=tuple(stored),
                result=event.result,
            ),
            environment=environment,
            workflow=workflow,
        )
        await msg.ack_sync()
        await self._cleanup(event)
        bound.info(
            "outputs stored",
            outcome="completed",
            outputs=len(stored),
            seconds=round(time.monotonic() - started, 4),
        )

    async def _store(self, task_id: str, output: OutputObject) -> StoredOutput:
        assert self._objects is not None
        try:
            data = await self._reader.read(output.object_name)
        except NotFoundError:
            raise _MissingObject(
                f"output {output.filename} is no longer in the Object Store (expired?)"
            ) from None
        key = output_key(task_id, output.filename)
        url = await self._provider.put(key, data, output.content_type)
        return StoredOutput(
            filename=output.filename,
            content_type=output.content_type,
            size=output.size,
            url=url,
            key=key,
            provider=self._provider.name,
            node_id=output.node_id,
        )

    async def _cleanup(self, event: OutputsReady) -> None:
        assert self._objects is not None
        for name in [*(o.object_name for o in event.outputs), *event.input_objects]:
            with contextlib.suppress(Exception):
                await self._objects.delete(name)
