"""``POST /api/face-swap/process``: create a face swap and wait (bounded) for its result."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from pixelbus.contracts.face_swap import FaceSwapOptions
from pixelbus.contracts.keys import TASKS_WRITE
from pixelbus.contracts.validation import (
    FACE_SWAP_WORKFLOW,
    TaskSpec,
    ValidationFailed,
    decode_face_swap_request,
    validate_face_swap_fields,
)
from pixelbus.contracts.views import task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import BODY_RESPONSES, Gateway, gateway, validation_response
from pixelbus.gateway.follow import wait_final
from pixelbus.gateway.responses import Json, json_request

router = APIRouter(prefix="/api/face-swap", tags=["face swap"])

EXAMPLE: dict[str, Any] = {
    "source_url": "https://example.com/source.jpg",
    "target_url": "https://example.com/target.jpg",
    "resolution": "1024x1024",
}


@router.post(
    "/process",
    summary="Swap the source's face onto the target and wait for the result",
    responses={
        **AUTH_RESPONSES,
        **BODY_RESPONSES,
        200: {"description": "the task is final (COMPLETED with result, FAILED with error)"},
        202: {"description": "still running when the wait ran out: poll GET /api/tasks/{taskId}"},
        413: {"description": "request body too large"},
        422: {"description": "invalid request; `detail` names each field"},
    },
    openapi_extra=json_request({"urls": EXAMPLE}, body=FaceSwapOptions),
)
async def process(
    request: Request,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_WRITE))],
    wait: Annotated[
        float | None, Query(ge=0, description="seconds to wait for the result (bounded)")
    ] = None,
) -> Response:
    """Images are http(s) URLs or ``data:`` URIs (base64)."""
    raw = await request.body()
    try:
        fields = decode_face_swap_request(raw)
        wf_json = validate_face_swap_fields(fields, ("body",), strict=True)
        spec = TaskSpec(None, FACE_SWAP_WORKFLOW, FACE_SWAP_WORKFLOW, {"wf_json": wf_json})
        state, _ = await gw.create_task(spec, caller)
    except ValidationFailed as exc:
        return validation_response(exc.errors)
    settings = gw.settings
    timeout = min(
        settings.face_swap_wait_s if wait is None else wait, settings.face_swap_max_wait_s
    )
    final = await wait_final(gw.nc, gw.feed, state.task_id, timeout) if timeout > 0 else None
    if final is not None and final.is_final:
        return Json(status_code=200, content=task_view(final))
    latest = final or state
    return Json(
        status_code=202,
        content=task_view(latest),
        headers={"Location": f"/api/tasks/{state.task_id}"},
    )
