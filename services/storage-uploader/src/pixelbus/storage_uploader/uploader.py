"""The storage uploader: ``OutputsReady`` → provider → ``TaskCompleted`` with public URLs.

The only service that writes to external storage. Small outputs come inline in the event;
larger ones are streamed from the Object Store to the provider chunk by chunk
(``ObjectReader.chunks``), so a large output never sits in memory whole. A task's outputs
are stored concurrently, and the message is kept alive with in-progress acks meanwhile.
Keys are deterministic (``output_key``, by the event's date and the task id), so a
redelivered ``OutputsReady`` overwrites instead of duplicating, and ``TaskCompleted`` has
one id per task, so it is stored once: that is why a plain ack is enough, and why the
task's state is read first only on a redelivery (to skip a task already final). A
retryable failure is retried in-process with backoff (``retry``), then by redelivery with
a growing delay; a permanent one fails the task at once. The Object Store entries a task
used are removed once the completion is recorded (their bucket TTL is the backstop). The
provider's reachability is published for ``/api/health`` (``presence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import uuid

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import trace

from pixelbus.contracts.events import (
    OutputsReady,
    decode_event,
)
from pixelbus.contracts.subjects import (
    OUTPUTS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    UPLOADER_CONSUMER,
    WORKERS_BUCKET,
    sanitize_token,
)
from pixelbus.contracts.task import OutputObject, StoredOutput
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.lifecycle import Before, TaskEvents, after_failure, before_run
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.objects import ObjectReader, delete_objects
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import PullConsumer, dispatch, keep_alive, stop_when_set
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.runtime.tracing import (
    context_from_headers,
    messaging_attributes,
    tracer,
    tracing_on,
)
from pixelbus.storage_uploader.errors import StorageError
from pixelbus.storage_uploader.presence import ProviderHealth, presence_key, presence_value
from pixelbus.storage_uploader.providers.base import StorageProvider, Upload, output_key
from pixelbus.storage_uploader.retry import store_with_retries
from pixelbus.storage_uploader.settings import RetrySettings

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
        retry: RetrySettings | None = None,
        health_interval_s: float = 30.0,
        presence_interval_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._provider = provider
        self._settings = settings
        self._redelivery = settings.retry_policy()
        self._concurrency = concurrency
        self._publisher = EventPublisher(self._js)
        self._stopping = asyncio.Event()
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None
        self._reader = ObjectReader(self._js, OUTPUTS_BUCKET)
        self._retry = retry or RetrySettings()
        self._health = ProviderHealth()
        self._health_interval_s = health_interval_s
        self._presence_interval_s = presence_interval_s
        self._id = sanitize_token(f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        self._in_flight = 0
        self._metrics = process_metrics()

    @property
    def health(self) -> ProviderHealth:
        """The last verdict on the provider (from a check or an upload)."""
        return self._health

    def stop(self) -> None:
        self._stopping.set()

    async def check_provider(self) -> ProviderHealth:
        """Check the provider now and keep the verdict."""
        try:
            await asyncio.wait_for(self._provider.check(), 10)
        except (StorageError, TimeoutError) as exc:
            self._health = self._health.verdict(str(exc) or type(exc).__name__, utcnow())
        except Exception as exc:  # a provider bug must not stop the presence updates
            log.exception("provider check failed unexpectedly", provider=self._provider.name)
            self._health = self._health.verdict(f"{type(exc).__name__}: {exc}", utcnow())
        else:
            self._health = self._health.verdict(None, utcnow())
        return self._health

    async def _presence_loop(self) -> None:
        """Publish the provider and its health now and then; check it when due."""
        kv = await self._js.key_value(WORKERS_BUCKET)
        while True:
            if self._health.due(utcnow(), self._health_interval_s):
                await self.check_provider()
            value = presence_value(
                uploader_id=self._id,
                provider=self._provider.name,
                health=self._health,
                in_flight=self._in_flight,
                now=utcnow(),
            )
            try:
                await kv.put(presence_key(self._id), value)
            except Exception as exc:
                log.warning("presence update failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._presence_interval_s)
            if self._stopping.is_set():
                with contextlib.suppress(Exception):
                    await kv.delete(presence_key(self._id))
                return

    async def run(self) -> None:
        self._kv = await self._js.key_value(STATE_BUCKET)
        self._objects = await self._js.object_store(OUTPUTS_BUCKET)
        health = await self.check_provider()  # before the first upload: a known order
        consumer = PullConsumer(self._nc, TASK_STREAM, UPLOADER_CONSUMER, credit=self._concurrency)
        await consumer.start()
        stopper = asyncio.create_task(stop_when_set(self._stopping, consumer))
        presence = asyncio.create_task(self._presence_loop())
        log.info(
            "storage-uploader started",
            provider=self._provider.name,
            uploader=self._id,
            reachable=health.reachable,
            error=health.error,
        )
        try:
            running = await dispatch(consumer, self._handle)
            await consumer.close()
            if running:
                await asyncio.wait(running, timeout=30)
        finally:
            stopper.cancel()
            await consumer.close()
            self._stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(presence, 5)

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
        if not tracing_on():
            await self._handle_outputs(msg, event)
            return
        with tracer.start_as_current_span(
            "upload outputs",
            context=context_from_headers(dict(msg.headers or {})),
            kind=trace.SpanKind.CONSUMER,
            attributes=messaging_attributes("process", msg.subject, event.event_id),
        ) as span:
            span.set_attribute("pixelbus.task_id", event.task_id)
            await self._handle_outputs(msg, event)

    async def _handle_outputs(self, msg: Msg, event: OutputsReady) -> None:
        # Subject: pixelbus.tasks.<environment>.<workflow>.outputs.<task id>
        _, _, environment, workflow, *_ = msg.subject.split(".")
        self._in_flight += 1
        self._metrics.set_in_flight(UPLOADER_CONSUMER, self._in_flight)
        try:
            # a third of the lease, as the worker does: a 0.5 s floor was the whole lease at
            # PIXELBUS_ACK_WAIT_S=0.5, and every upload longer than it was redelivered
            with keep_alive(msg, max(0.2, self._settings.ack_wait_s / 3)):
                await self._upload(msg, event, environment, workflow)
        except Exception:  # the bus itself failed us: let the message come back
            log.exception("upload step failed; will be redelivered", task_id=event.task_id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._settings.retry_delay_s)
        finally:
            self._in_flight -= 1
            self._metrics.set_in_flight(UPLOADER_CONSUMER, self._in_flight)

    async def _upload(self, msg: Msg, event: OutputsReady, environment: str, workflow: str) -> None:
        assert self._kv is not None and self._objects is not None
        attempt = msg.metadata.num_delivered
        bound = log.bind(task_id=event.task_id, attempt=attempt, provider=self._provider.name)
        started = time.monotonic()
        events = TaskEvents(event.task_id, event.attempt, utcnow)
        if attempt > 1:  # a redelivery: the task may have ended meanwhile
            state, _ = await read_state(self._kv, event.task_id)
            if before_run(state) is Before.SKIP:
                await msg.ack()
                await self._cleanup(event)
                bound.info("outputs skipped: task already final", outcome="skipped")
                return
        try:
            if len(event.outputs) == 1:  # the common case: no task to gather
                stored = [await self._store(event, event.outputs[0])]
            else:
                stored = list(await asyncio.gather(*(self._store(event, o) for o in event.outputs)))
        except StorageError as exc:
            self._health = self._health.verdict(str(exc), utcnow())
            self._metrics.upload_failed(self._provider.name, exc.code)
            settle = after_failure(
                self._redelivery, attempt, retryable=exc.retryable, draw=random.random()
            )
            await self._publisher.publish(
                events.failed(
                    exc.code,
                    exc.message,
                    retryable=exc.retryable,
                    final=settle.final,
                    upload_attempt=attempt,
                ),
                environment=environment,
                workflow=workflow,
            )
            if settle.final:
                await msg.term()
            else:
                await msg.nak(delay=settle.delay_s)
            outcome = "final" if settle.final else "retry"
            bound.warning("upload failed", outcome=outcome, error=exc.message)
            return
        except _MissingObject as exc:
            await self._publisher.publish(
                events.failed("output_missing", str(exc), retryable=False, final=True),
                environment=environment,
                workflow=workflow,
            )
            await msg.term()
            return
        await self._publisher.publish(
            events.completed(stored, event.result),
            environment=environment,
            workflow=workflow,
        )
        await msg.ack()
        await self._cleanup(event)
        for output in stored:
            self._metrics.uploaded(output.provider, output.size)
        self._metrics.observe_duration(workflow, "upload", time.monotonic() - started)
        bound.debug(
            "outputs stored",
            outcome="completed",
            outputs=len(stored),
            seconds=round(time.monotonic() - started, 4),
        )

    async def _store(self, event: OutputsReady, output: OutputObject) -> StoredOutput:
        key = output_key(event.task_id, output.filename, event.occurred_at.date())
        missing = f"output {output.filename} is no longer in the Object Store (expired?)"
        if output.data is not None:
            upload = Upload.of_bytes(key, output.data, output.content_type)
        else:
            try:
                info = await self._reader.info(output.object_name)
            except NotFoundError:
                raise _MissingObject(missing) from None
            upload = Upload(
                key=key,
                content_type=output.content_type,
                size=info.size or output.size,
                open=lambda: self._reader.chunks(output.object_name),
            )
        try:
            stored = await store_with_retries(self._provider, upload, self._retry)
        except NotFoundError:  # removed while we read it
            raise _MissingObject(missing) from None
        self._health = self._health.verdict(None, utcnow())
        return StoredOutput(
            filename=output.filename,
            content_type=output.content_type,
            size=output.size,
            url=stored.url,
            key=upload.key,
            provider=stored.provider,
            node_id=output.node_id,
        )

    async def _cleanup(self, event: OutputsReady) -> None:
        """Remove the Object Store entries the task used (none for inline outputs)."""
        assert self._objects is not None
        names = [o.object_name for o in event.outputs if o.data is None]
        names.extend(event.input_objects)
        await delete_objects(self._objects, names)
