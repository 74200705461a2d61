"""What route handlers share: the running gateway's services, and error answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats.errors
from fastapi import Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from nats.js import JetStreamContext

from pixelbus.contracts.task import TaskState
from pixelbus.contracts.validation import FieldError, TaskSpec
from pixelbus.gateway.auth import KeyStore, Principal
from pixelbus.gateway.backlog import PoolBacklog
from pixelbus.gateway.follow import TaskFeed
from pixelbus.gateway.queue import QueueBoard
from pixelbus.gateway.quotas import ActiveTasks, RateLimiter
from pixelbus.gateway.responses import error
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.tasks import TaskService
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.runtime.task_index import TaskIndex
from pixelbus.runtime.webhook_log import DeliveryLogStore

__all__ = [
    "BODY_RESPONSES",
    "Gateway",
    "error_response",
    "gateway",
    "valid_task_id",
    "validation_response",
]


@dataclass
class Gateway:
    settings: GatewaySettings
    nc: Client
    js: JetStreamContext
    tasks: TaskService
    keys: KeyStore
    rates: RateLimiter
    active: ActiveTasks
    #: Admission to the pools' queues (503 when one is full).
    backlog: PoolBacklog
    #: The SSRF guard a task's ``webhook_url`` must pass at creation.
    webhook_policy: SsrfPolicy
    #: The webhooks service's delivery log, read by ``GET /api/tasks/{id}/webhooks``.
    webhook_log: DeliveryLogStore
    #: Queue positions of pending tasks, shared by every reader of this process.
    queues: QueueBoard
    #: New-event signals for the live followers of this process (one subscription per
    #: followed task, none per follower).
    feed: TaskFeed
    #: The task index (the projector's), read by ``GET /api/tasks``.
    index: TaskIndex
    extras: dict[str, Any] = field(default_factory=dict)

    async def create_task(
        self,
        spec: TaskSpec,
        principal: Principal,
        *,
        idempotency_key: str | None = None,
        admitted: bool = False,
    ) -> tuple[TaskState, bool]:
        """Create a task owned by the caller, within the caller's active-task quota (429)
        and the room in its pool's queue (503). ``admitted``: the caller holds the queue's
        admission already (a batch admits all its tasks at once)."""
        if not self.nc.is_connected:  # a 503 at once, not after the publisher's patience
            raise nats.errors.ConnectionReconnectingError
        if not admitted:
            await self.backlog.check(spec.environment)
        reserved = await self.active.reserve(principal)
        try:
            async with self.backlog.admit(spec.environment, 0 if admitted else 1):
                state, is_new = await self.tasks.create(
                    spec,
                    idempotency_key=idempotency_key,
                    owner=principal.owner,
                    quota_reserved=reserved,
                )
        except BaseException:
            if reserved:
                await self.active.release(principal.owner)
            raise
        if reserved and not is_new:
            await self.active.release(principal.owner)
        return state, is_new

    async def visible_task(self, task_id: str, principal: Principal) -> TaskState | None:
        """The task, or ``None`` when it does not exist *or* belongs to another tenant:
        both answer 404, so task ids cannot be probed."""
        state = await self.tasks.get(task_id) if valid_task_id(task_id) else None
        if state is None or not principal.sees(state.owner):
            return None
        return state


#: What every route with a JSON body may also answer, before its own validation runs.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error("the body cannot be parsed (e.g. it is not UTF-8 JSON)"),
}


def valid_task_id(task_id: str) -> bool:
    """ASCII letters, digits, ``_`` and ``-`` (``str.isalnum`` alone admits any script,
    which the KV bucket refuses as a key)."""
    return 0 < len(task_id) <= 128 and all(
        (c.isascii() and c.isalnum()) or c in "_-" for c in task_id
    )


async def gateway(request: Request) -> Gateway:
    """Route dependency (``async``: FastAPI runs a plain ``def`` one in a thread)."""
    gw: Gateway = request.app.state.gateway
    return gw


def validation_response(errors: list[FieldError]) -> JSONResponse:
    detail = [{"loc": list(e.loc), "msg": e.msg, "type": e.type} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message, **extra})
