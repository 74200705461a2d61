"""``POST /api/face-swap/batch``: many face swaps at once, one task each, and
``GET /api/face-swap/batch/{batch_id}``: their states together.

A batch is all or nothing at creation: every item is validated (data: URIs decoded)
before any task is published. Its tasks get ids derived from the batch id
(``{batch_id}_{index}``), and the batch id carries the count, so the status endpoint needs
no storage of its own and any gateway replica can answer it. With an ``Idempotency-Key``
the batch id is derived from the key: a retried request yields the same tasks. How many
tasks run at once is the workers' business (their pull consumers), not the gateway's.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import Counter
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from pixelbus.contracts.keys import TASKS_READ, TASKS_WRITE
from pixelbus.contracts.task import TaskState
from pixelbus.contracts.validation import (
    FACE_SWAP_WORKFLOW,
    FieldError,
    TaskSpec,
    ValidationFailed,
    validate_face_swap_fields,
)
from pixelbus.contracts.views import task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import (
    BODY_RESPONSES,
    Gateway,
    error_response,
    gateway,
    validation_response,
)
from pixelbus.gateway.responses import Json, json_request
from pixelbus.gateway.tasks import TaskConflict
from pixelbus.media.data_uri import decode_data_uri
from pixelbus.media.errors import MediaError

__all__ = ["MAX_BATCH_ITEMS", "router"]

router = APIRouter(prefix="/api/face-swap", tags=["face swap"])

MAX_BATCH_ITEMS = 100
_CREATE_CONCURRENCY = 16
_BATCH_ID = re.compile(r"^batch_[0-9a-f]{20}_([1-9][0-9]{0,3})$")
_IMAGE_FIELDS = ("source_url", "target_url")


class BatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    items: list[dict[str, Any]]
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    """Fields every item gets unless it sets them itself (e.g. model, output_format)."""


EXAMPLE: dict[str, Any] = {
    "defaults": {"target_url": "https://example.com/group.jpg", "output_format": "webp"},
    "items": [
        {"source_url": "https://example.com/a.jpg"},
        {"source_url": "https://example.com/b.jpg", "target_face_index": 0},
    ],
}


@router.post(
    "/batch",
    status_code=201,
    summary="Create many face swaps at once (one task each)",
    responses={
        **AUTH_RESPONSES,
        **BODY_RESPONSES,
        200: {"description": "an Idempotency-Key seen before: the same batch"},
        201: {"description": "the batch id and its tasks, PENDING"},
        413: {"description": "request body too large"},
        422: {"description": "invalid request; `detail` names each field (items.N.field)"},
    },
    openapi_extra=json_request({"batch": EXAMPLE}),
)
async def create_batch(
    request: Request,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_WRITE))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Response:
    """Each item has the fields of ``POST /api/face-swap/process``; answers at once."""
    try:
        batch = msgspec.json.decode(await request.body(), type=BatchRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return validation_response([FieldError(("body",), str(exc), "type_error")])
    try:
        fields = _validate(batch, gw.settings.max_input_image_bytes)
    except ValidationFailed as exc:
        return validation_response(exc.errors)
    if idempotency_key is not None:
        scoped = f"{caller.owner}\x00{idempotency_key}"  # per tenant
        digest = hashlib.sha256(scoped.encode()).hexdigest()[:20]
    else:
        digest = uuid.uuid4().hex[:20]
    batch_id = f"batch_{digest}_{len(fields)}"
    gate = asyncio.Semaphore(_CREATE_CONCURRENCY)

    async def create(index: int, wf_json: dict[str, Any]) -> tuple[TaskState, bool]:
        task_id = f"{batch_id}_{index}"
        spec = TaskSpec(task_id, FACE_SWAP_WORKFLOW, FACE_SWAP_WORKFLOW, {"wf_json": wf_json})
        async with gate:
            try:
                return await gw.create_task(spec, caller, admitted=True)
            except TaskConflict:  # a retried batch: the task exists already
                state = await gw.visible_task(task_id, caller)
                assert state is not None
                return state, False

    # the queue's room for the whole batch at once: all of it fits, or none is created
    async with gw.backlog.admit(FACE_SWAP_WORKFLOW, len(fields)):
        created = await asyncio.gather(*(create(i, f) for i, f in enumerate(fields)))
    is_new = any(new for _, new in created)
    return Json(
        status_code=201 if is_new else 200,
        content={
            "batch_id": batch_id,
            "count": len(created),
            "status_url": f"/api/face-swap/batch/{batch_id}",
            "tasks": [{"taskId": s.task_id, "status": s.status.value} for s, _ in created],
        },
    )


@router.get(
    "/batch/{batch_id}",
    summary="The states of a batch's tasks, together",
    responses={**AUTH_RESPONSES, 404: {"description": "no such batch (or another tenant's)"}},
)
async def batch_status(
    batch_id: str,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
) -> Response:
    """``counts`` per status, ``done`` once every task is final, and each task as
    ``GET /api/tasks/{task_id}`` shows it."""
    match = _BATCH_ID.match(batch_id)
    if match is None:
        return error_response(404, f"batch {batch_id} not found")
    count = int(match.group(1))
    states = await asyncio.gather(
        *(gw.visible_task(f"{batch_id}_{i}", caller) for i in range(count))
    )
    if all(state is None for state in states):
        return error_response(404, f"batch {batch_id} not found")
    tasks = [
        task_view(state)
        if state is not None
        else {"taskId": f"{batch_id}_{i}", "status": "UNKNOWN"}
        for i, state in enumerate(states)
    ]
    counts = Counter(task["status"] for task in tasks)
    done = all(state is not None and state.is_final for state in states)
    return Json(
        content={
            "batch_id": batch_id,
            "count": count,
            "done": done,
            "counts": dict(sorted(counts.items())),
            "tasks": tasks,
        }
    )


def _validate(batch: BatchRequest, max_image_bytes: int) -> list[dict[str, Any]]:
    """Every item's normalised fields; ValidationFailed names every bad one."""
    errors: list[FieldError] = []
    if not batch.items:
        errors.append(FieldError(("body", "items"), "at least one item is required"))
    if len(batch.items) > MAX_BATCH_ITEMS:
        errors.append(
            FieldError(("body", "items"), f"at most {MAX_BATCH_ITEMS} items in one batch")
        )
    if errors:
        raise ValidationFailed(errors)
    normalised: list[dict[str, Any]] = []
    for index, item in enumerate(batch.items):
        loc: tuple[str | int, ...] = ("body", "items", index)
        merged = {**batch.defaults, **item}
        try:
            fields = validate_face_swap_fields(merged, loc, strict=True)
        except ValidationFailed as exc:
            errors.extend(exc.errors)
            continue
        for name in _IMAGE_FIELDS:
            value = fields.get(name)
            if isinstance(value, str) and value[:5].lower() == "data:":
                try:
                    decode_data_uri(value, max_bytes=max_image_bytes)
                except MediaError as exc:
                    errors.append(FieldError((*loc, name), str(exc)))
        normalised.append(fields)
    if errors:
        raise ValidationFailed(errors)
    return normalised
