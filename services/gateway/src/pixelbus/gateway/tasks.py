"""Creating, reading, waiting on and cancelling tasks: the gateway's use of the bus.

The gateway never writes the task state: the projector (its own service) is the only
writer of ``PIXELBUS_TASK_STATE``. Read-your-writes still holds across replicas:
``create`` answers with the state folded from its own ``TaskCreated``, and ``get`` (every
read: ``GET /api/tasks/{id}``, cancel, the 409 of an existing ``taskId``, live progress,
batch status) falls back, when the bucket has no entry yet, to the task's ``TaskCreated``
in the stream — one request, the last message on ``pixelbus.tasks.*.*.created.<id>`` —
folded into the ``PENDING`` state the projector is about to write. A task that exists is
never answered 404, whichever replica is asked and however far the projector lags.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from pixelbus.contracts.events import (
    TaskCancelRequested,
    TaskCreated,
    decode_event,
    encode_event,
    event_id,
)
from pixelbus.contracts.fold import apply
from pixelbus.contracts.subjects import (
    COMFY_ENVIRONMENT,
    IDEMPOTENCY_BUCKET,
    LEASES_BUCKET,
    OUTPUTS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    created_filter,
    input_object_names,
)
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.contracts.validation import FieldError, TaskSpec, ValidationFailed
from pixelbus.gateway.inputs import store_inline_images
from pixelbus.gateway.leases import Lease
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.lifecycle import TaskEvents
from pixelbus.runtime.objects import delete_objects
from pixelbus.runtime.publisher import EventPublisher, FirstOnTaken
from pixelbus.runtime.state import read_state

__all__ = ["TaskConflict", "TaskService"]


class TaskConflict(Exception):
    """The request conflicts with the task's state (e.g. cancelling a finished task)."""

    def __init__(self, message: str, state: TaskState | None = None) -> None:
        super().__init__(message)
        self.state = state


#: How long an HTTP request keeps retrying a publish the bus cannot take right now.
REQUEST_PATIENCE_S = 5.0


class TaskService:
    def __init__(self, nc: Client, js: JetStreamContext, *, max_input_image_bytes: int) -> None:
        self.nc = nc
        self.js = js
        # A client waits on this publish: through an election it gets a 503 with
        # Retry-After within ~5 s instead of a request held open for the workers' 20 s.
        self.publisher = EventPublisher(js, timeout_s=2, patience_s=REQUEST_PATIENCE_S)
        self.max_input_image_bytes = max_input_image_bytes
        self._kv: KeyValue | None = None
        self._idempotency: KeyValue | None = None
        self._leases: KeyValue | None = None
        self._objects: ObjectStore | None = None

    async def open(self) -> None:
        self._kv = await self.js.key_value(STATE_BUCKET)
        self._idempotency = await self.js.key_value(IDEMPOTENCY_BUCKET)
        self._leases = await self.js.key_value(LEASES_BUCKET)
        self._objects = await self.js.object_store(OUTPUTS_BUCKET)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "TaskService.open() first"
        return self._kv

    @property
    def leases(self) -> KeyValue:
        assert self._leases is not None
        return self._leases

    @property
    def objects(self) -> ObjectStore:
        assert self._objects is not None
        return self._objects

    async def get(self, task_id: str) -> TaskState | None:
        """The projected state; for a task not projected yet, its ``TaskCreated`` from the
        stream folded into ``PENDING``; ``None`` when the task does not exist."""
        state, _ = await read_state(self.kv, task_id)
        if state is not None:
            return state
        created = await self.created_event(task_id)
        return apply(None, created) if created is not None else None

    async def created_event(self, task_id: str) -> TaskCreated | None:
        """The task's ``TaskCreated`` from the stream (one request: the last message on
        its ``created`` subject, whatever its environment and workflow)."""
        try:
            raw = await self.js.get_last_msg(TASK_STREAM, created_filter(task_id))
        except NotFoundError:
            return None
        event = decode_event(raw.data or b"")
        if not isinstance(event, TaskCreated) or event.task_id != task_id:
            return None
        return event

    async def create(
        self,
        spec: TaskSpec,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        quota_reserved: bool = False,
    ) -> tuple[TaskState, bool]:
        """Publish ``TaskCreated``; returns the state and whether it is a new task.

        With an ``Idempotency-Key`` the first request records its ``TaskCreated`` in the
        idempotency bucket (create-if-absent) and every retry republishes that same event,
        which JetStream de-duplicates: one key, one task, even across gateway replicas.
        """
        task_id = spec.task_id or f"task_{uuid.uuid4().hex}"
        input_data = await store_inline_images(
            self.objects, task_id, spec, max_bytes=self.max_input_image_bytes
        )
        event = TaskCreated(
            event_id=event_id(task_id, "created"),
            task_id=task_id,
            occurred_at=utcnow(),
            workflow=spec.workflow,
            environment=spec.environment,
            input_data=input_data,
            owner=owner,
            quota_reserved=quota_reserved,
            idempotency_key=idempotency_key,
            webhook_url=spec.webhook_url,
            webhook_events=spec.webhook_events,
        )
        is_new = True
        if idempotency_key is not None:
            # Per tenant: another tenant's identical key is another request.
            scoped = f"{owner or ''}\x00{idempotency_key}"
            event, is_new = await self._claim_idempotency_key(scoped, event)
        if not is_new:  # the key's first request made the task: this one's inputs go
            await self._drop_inputs(input_data)
        if spec.task_id is not None and is_new:
            try:
                await self._publish_first(event)
            except TaskConflict:
                await self._drop_inputs(input_data)
                raise
        else:
            await self.publisher.publish(
                event, environment=event.environment, workflow=event.workflow
            )
        # The answer is the state the projector folds from this same event (it writes it).
        return apply(None, event), is_new

    async def _drop_inputs(self, input_data: dict[str, Any]) -> None:
        """Remove inputs this request stored for a task that is not its own."""
        await delete_objects(self.objects, input_object_names(input_data))

    async def _publish_first(self, event: TaskCreated) -> None:
        """Publish the ``TaskCreated`` of a caller-chosen task id only if none exists: the
        stream checks it as it stores the event (no read first, no race between two
        creates). A refusal is ours only when the stored event is this very one (a publish
        retried after a lost ack); otherwise the id is taken."""
        filter_ = created_filter(event.task_id)
        try:
            ack = await self.publisher.publish(
                event, environment=event.environment, workflow=event.workflow, first_on=filter_
            )
            taken = bool(ack.duplicate)
        except FirstOnTaken:
            taken = True
        if taken and await self.created_event(event.task_id) != event:
            raise TaskConflict(f"task {event.task_id} already exists")

    async def _claim_idempotency_key(
        self, key: str, event: TaskCreated
    ) -> tuple[TaskCreated, bool]:
        assert self._idempotency is not None
        kv_key = hashlib.sha256(key.encode()).hexdigest()
        try:
            await self._idempotency.create(kv_key, encode_event(event))
            return event, True
        except KeyWrongLastSequenceError:
            entry = await self._idempotency.get(kv_key)
            assert entry.value is not None
            previous = decode_event(entry.value)
            assert isinstance(previous, TaskCreated)
            if (previous.workflow, previous.environment) != (event.workflow, event.environment):
                raise ValidationFailed(
                    [
                        FieldError(
                            ("header", "Idempotency-Key"),
                            "already used for a different request",
                        )
                    ]
                ) from None
            return previous, False

    async def cancel(self, task_id: str, reason: str | None) -> TaskState:
        """The task's state once its cancellation is requested; ``KeyError``: no such
        task, ``TaskConflict``: it is final already."""
        state = await self.get(task_id)
        if state is None:
            raise KeyError(task_id)
        if state.is_final:
            raise TaskConflict(f"task {task_id} is already {state.status.value}", state)
        environment, workflow = state.environment or COMFY_ENVIRONMENT, state.workflow or "unknown"
        await self.publisher.publish(
            TaskCancelRequested(
                event_id=event_id(task_id, "cancel_requested"),
                task_id=task_id,
                occurred_at=utcnow(),
                reason=reason,
            ),
            environment=environment,
            workflow=workflow,
        )
        revoked = await self._revoke_lease(task_id)
        if state.status is TaskStatus.PENDING or revoked:
            # Queued (skipped when its turn comes) or leased externally (lease revoked):
            # nobody is running it here, so the gateway records the cancellation.
            await self.publisher.publish(
                TaskEvents(task_id, state.attempts, utcnow).cancelled(reason),
                environment=environment,
                workflow=workflow,
            )
        # A running in-cluster task is interrupted by its worker, which records it.
        return await self.get(task_id) or state

    async def _revoke_lease(self, task_id: str) -> bool:
        try:
            entry = await self.leases.get(task_id)
        except KeyNotFoundError:
            return False
        if entry.value is None:
            return False
        lease = msgspec.json.decode(entry.value, type=Lease)
        await self.nc.publish(lease.reply, b"+TERM")
        await self.leases.delete(task_id)
        return True
