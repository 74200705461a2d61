"""The external-consumer API, ``/api/comm/task/*``: GPU agents outside the cluster lease
tasks from the same pool as the workers (the ``comm`` in the paths is the historical wire
name, kept as is; it is not the ComfyUI environment, though that is also called ``comm``).

``fetch`` long-polls the pool's durable consumer; the delivered message is the lease, kept
alive by ``progress`` (an in-progress ack) and ended by ``complete`` or ``fail``. A
consumer silent for longer than the consumer's AckWait loses the lease: JetStream hands
the task to the next puller and the old token is refused (409).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from nats.js.errors import FetchTimeoutError, KeyNotFoundError
from pydantic import BaseModel, Field

from pixelbus.contracts.events import (
    TaskCreated,
    decode_event,
)
from pixelbus.contracts.keys import CONSUMER
from pixelbus.contracts.subjects import (
    COMFY_ENVIRONMENT,
    FACE_SWAP_ENVIRONMENT,
    TASK_STREAM,
    pool_for_environment,
    sanitize_token,
)
from pixelbus.contracts.task import StoredOutput
from pixelbus.gateway.auth import AUTH_RESPONSES, require
from pixelbus.gateway.deps import BODY_RESPONSES, Gateway, error_response, gateway
from pixelbus.gateway.leases import Lease, LeaseError, sign_lease, verify_lease
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.lifecycle import Before, TaskEvents, after_failure, before_run
from pixelbus.runtime.state import read_state
from pixelbus.runtime.worker import OutputFile, pack_outputs

router = APIRouter(
    prefix="/api/comm/task",
    tags=["external consumers"],
    dependencies=[Depends(require(CONSUMER))],
    responses=AUTH_RESPONSES,
)


#: the environments whose pools an external consumer may lease from
_ENVIRONMENT_PATTERN = f"^({COMFY_ENVIRONMENT}|{FACE_SWAP_ENVIRONMENT})$"


class LeaseBody(BaseModel):
    lease_token: str = Field(min_length=10, max_length=4096)


class ProgressBody(LeaseBody):
    fraction: float | None = Field(default=None, ge=0, le=1)
    node: str | None = Field(default=None, max_length=200)
    message: str | None = Field(default=None, max_length=2000)


class OutputIn(BaseModel):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=200)
    url: str | None = Field(default=None, max_length=4096, description="already stored here")
    data_base64: str | None = Field(default=None, description="or: the bytes, to be stored")
    node_id: str | None = Field(default=None, max_length=200, description="the workflow node")


class CompleteBody(LeaseBody):
    outputs: list[OutputIn] = Field(default_factory=list, max_length=64)
    result: dict[str, Any] | None = None


class FailBody(LeaseBody):
    message: str = Field(min_length=1, max_length=4000)
    code: str = Field(default="consumer_error", max_length=100)
    retryable: bool = False


async def _pull(gw: Gateway, environment: str) -> Any:
    subs: dict[str, Any] = gw.extras.setdefault("consumer_subs", {})
    locks: dict[str, asyncio.Lock] = gw.extras.setdefault("consumer_locks", {})
    pool = pool_for_environment(environment)
    if pool.name not in subs:
        subs[pool.name] = await gw.js.pull_subscribe_bind(durable=pool.durable, stream=TASK_STREAM)
        locks[pool.name] = asyncio.Lock()
    return subs[pool.name], locks[pool.name]


@router.get(
    "/fetch",
    summary="Lease one task (long-poll)",
    responses={
        200: {"description": "a leased task"},
        204: {"description": "no task within `wait`"},
    },
)
async def fetch_task(
    gw: Annotated[Gateway, Depends(gateway)],
    environment: Annotated[str, Query(pattern=_ENVIRONMENT_PATTERN)] = COMFY_ENVIRONMENT,
    wait: Annotated[float, Query(ge=0, description="seconds to long-poll (bounded)")] = 10,
    consumer: Annotated[str, Query(min_length=1, max_length=64)] = "external",
) -> Response:
    """Take one task from the pool; answer with it and its lease token, or 204."""
    sub, lock = await _pull(gw, environment)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, gw.settings.fetch_max_wait_s)
    async with lock:
        while True:
            remaining = deadline - loop.time()
            try:
                msgs = await sub.fetch(1, timeout=max(remaining, 0.05))
            except (FetchTimeoutError, TimeoutError):
                return Response(status_code=204)
            msg = msgs[0]
            try:
                event = decode_event(msg.data)
            except msgspec.DecodeError:
                await msg.term()
                continue
            if not isinstance(event, TaskCreated):
                await msg.term()
                continue
            state, _ = await read_state(gw.tasks.kv, event.task_id)
            if before_run(state) is not Before.RUN:
                await msg.ack()  # cancelled (and recorded so) or finished while queued
                continue
            break
    attempt = msg.metadata.num_delivered
    lease = Lease(
        task_id=event.task_id,
        reply=msg.reply,
        attempt=attempt,
        consumer=consumer,
        environment=event.environment,
        workflow=event.workflow,
    )
    await gw.tasks.leases.put(event.task_id, msgspec.json.encode(lease))
    await gw.tasks.publisher.publish(
        TaskEvents(event.task_id, attempt, utcnow).started(f"external:{sanitize_token(consumer)}"),
        environment=event.environment,
        workflow=event.workflow,
    )
    return JSONResponse(
        content={
            "taskId": event.task_id,
            "workflow": event.workflow,
            "environment": event.environment,
            "params": {"input_data": event.input_data},
            "status": "PROCESSING",
            "attempt": attempt,
            "lease": {
                "token": sign_lease(lease, gw.settings.lease_secret),
                "expires_in_s": lease_s(gw, event.environment),
            },
        }
    )


def lease_s(gw: Gateway, environment: str) -> float:
    """An external consumer's lease: its pool's ack wait, extended by each heartbeat."""
    return gw.settings.bus.ack_wait_for(pool_for_environment(environment).name)


async def _current_lease(gw: Gateway, task_id: str, token: str) -> Lease:
    """The lease ``token`` grants, while it is the task's current one; ``HTTPException``
    403 (not a valid token for this task) or 409 (the lease is lost) otherwise."""
    try:
        lease = verify_lease(token, gw.settings.lease_secret)
    except LeaseError as exc:
        raise HTTPException(403, str(exc)) from None
    if lease.task_id != task_id:
        raise HTTPException(403, "the lease token is for another task")
    try:
        entry = await gw.tasks.leases.get(task_id)
    except KeyNotFoundError:
        entry = None
    if entry is None or entry.value is None:
        raise HTTPException(409, "lease lost: the task was completed, cancelled or re-leased")
    current = msgspec.json.decode(entry.value, type=Lease)
    if current.lease_id != lease.lease_id:
        raise HTTPException(409, "lease lost: it expired and the task was handed out again")
    return lease


@router.post(
    "/{task_id}/progress", summary="Report progress; extends the lease", responses=BODY_RESPONSES
)
async def report_progress(
    task_id: str, body: ProgressBody, gw: Annotated[Gateway, Depends(gateway)]
) -> JSONResponse:
    lease = await _current_lease(gw, task_id, body.lease_token)
    await gw.nc.publish(lease.reply, b"+WPI")
    seq = int(utcnow().timestamp() * 1000)
    await gw.tasks.publisher.publish(
        TaskEvents(task_id, lease.attempt, utcnow).progress(
            seq, body.fraction, body.node, body.message
        ),
        environment=lease.environment,
        workflow=lease.workflow,
    )
    return JSONResponse(content={"lease_expires_in_s": lease_s(gw, lease.environment)})


@router.post(
    "/{task_id}/complete",
    summary="Complete a leased task with its outputs",
    responses=BODY_RESPONSES,
)
async def complete(
    task_id: str, body: CompleteBody, gw: Annotated[Gateway, Depends(gateway)]
) -> JSONResponse:
    """Outputs given by ``url`` are taken as stored; outputs given as ``data_base64`` go
    through the storage uploader like any worker's outputs."""
    lease = await _current_lease(gw, task_id, body.lease_token)
    stored: list[StoredOutput] = []
    files: list[OutputFile] = []
    for index, out in enumerate(body.outputs):
        if out.data_base64 is not None:
            try:
                data = base64.b64decode(out.data_base64, validate=True)
            except (binascii.Error, ValueError):
                return error_response(422, f"outputs[{index}].data_base64 is not valid base64")
            files.append(OutputFile(out.filename, data, out.content_type, node_id=out.node_id))
        elif out.url is not None:
            if not out.url.startswith(("https://", "http://")):
                return error_response(422, f"outputs[{index}].url must be an http(s) URL")
            stored.append(
                StoredOutput(
                    filename=out.filename,
                    content_type=out.content_type,
                    size=0,
                    url=out.url,
                    key=out.url,
                    provider="external",
                    node_id=out.node_id,
                )
            )
        else:
            return error_response(422, f"outputs[{index}] needs url or data_base64")
    if files and stored:
        return error_response(422, "give all outputs as url, or all as data_base64")
    # the same packing as a worker's: small outputs inline, the rest via the Object Store
    to_upload = await pack_outputs(
        gw.tasks.objects, task_id, files, gw.settings.bus.inline_output_bytes
    )
    publish = gw.tasks.publisher.publish
    events = TaskEvents(task_id, lease.attempt, utcnow)
    await publish(
        events.outputs(to_upload, body.result)
        if to_upload
        else events.completed(stored, body.result),
        environment=lease.environment,
        workflow=lease.workflow,
    )
    await gw.nc.request(lease.reply, b"+ACK", timeout=5)  # double ack: the server confirms
    with contextlib.suppress(Exception):
        await gw.tasks.leases.delete(task_id)
    return JSONResponse(content={"taskId": task_id, "accepted": True})


@router.post(
    "/{task_id}/fail", summary="Fail a leased task (retryable or not)", responses=BODY_RESPONSES
)
async def fail(
    task_id: str, body: FailBody, gw: Annotated[Gateway, Depends(gateway)]
) -> JSONResponse:
    lease = await _current_lease(gw, task_id, body.lease_token)
    settings = gw.settings.bus
    settle = after_failure(
        settings.retry_policy(), lease.attempt, retryable=body.retryable, draw=random.random()
    )
    await gw.tasks.publisher.publish(
        TaskEvents(task_id, lease.attempt, utcnow).failed(
            body.code, body.message, retryable=body.retryable, final=settle.final
        ),
        environment=lease.environment,
        workflow=lease.workflow,
    )
    if settle.final:
        await gw.nc.publish(lease.reply, b"+TERM")
    else:
        delay_ns = int(settle.delay_s * 1e9)
        await gw.nc.publish(lease.reply, b"-NAK " + json.dumps({"delay": delay_ns}).encode())
    with contextlib.suppress(Exception):
        await gw.tasks.leases.delete(task_id)
    return JSONResponse(content={"taskId": task_id, "final": settle.final})
