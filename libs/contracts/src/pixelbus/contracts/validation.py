"""Validation of client requests. Pure: values in, a normalised task spec or errors out.

Errors are ``FieldError``s whose ``loc`` is the path of the offending field in the
request body, so that the gateway can answer 422 naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from pixelbus.contracts.face_swap import FaceSwapOptions, check_face_swap_options
from pixelbus.contracts.subjects import COMFY_ENVIRONMENT, ENVIRONMENTS, FACE_SWAP_ENVIRONMENT
from pixelbus.contracts.task import CreateTaskRequest
from pixelbus.contracts.webhooks import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS

__all__ = [
    "FACE_SWAP_WORKFLOW",
    "PROBE_WORKFLOW",
    "FieldError",
    "TaskSpec",
    "ValidationFailed",
    "decode_create_request",
    "decode_face_swap_request",
    "validate_create",
    "validate_face_swap_fields",
]

FACE_SWAP_WORKFLOW = "face_swap"
PROBE_WORKFLOW = "probe"
MAX_URL_LENGTH = 2048
_TASK_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_WORKFLOW = re.compile(r"^[A-Za-z0-9_\-.]{1,128}$")
_IMAGE_FIELDS = ("source_url", "target_url")
_Body = TypeVar("_Body")


@dataclass(frozen=True, slots=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"


class ValidationFailed(Exception):
    """The request is invalid; ``errors`` names every offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated, normalised task, ready to become ``TaskCreated``."""

    task_id: str | None
    workflow: str
    environment: str
    input_data: dict[str, Any]
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()


def _decode_errors(exc: msgspec.ValidationError, prefix: tuple[str, ...]) -> FieldError:
    # msgspec says e.g. "Object missing required field `x` - at `$.params`" or
    # "Object contains unknown field `status` - at `$`".
    text = str(exc)
    message, _, where = text.partition(" - at `")
    loc: list[str | int] = list(prefix)
    path = where.rstrip("`").removeprefix("$")
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        loc.append(part[0] if part[0] else int(part[1]))
    field = re.search(r"field `([^`]+)`", message)
    if field:
        loc.append(field.group(1))
    kind = "extra_forbidden" if "unknown field" in message else "type_error"
    if "missing required field" in message:
        kind = "missing"
    return FieldError(tuple(loc), message, kind)


_TOO_DEEP = FieldError(("body",), "JSON nests too deep", "json_invalid")


def _decode(body: bytes, kind: type[_Body]) -> _Body:
    """A JSON request body decoded once into ``kind``; ``ValidationFailed`` naming the
    field (or the body) otherwise."""
    try:
        return msgspec.json.decode(body, type=kind)
    except RecursionError:
        raise ValidationFailed([_TOO_DEEP]) from None
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_decode_errors(exc, ("body",))]) from exc
    except msgspec.DecodeError as exc:
        raise ValidationFailed(
            [FieldError(("body",), f"invalid JSON: {exc}", "json_invalid")]
        ) from exc


def decode_create_request(body: bytes) -> CreateTaskRequest:
    return _decode(body, CreateTaskRequest)


def decode_face_swap_request(body: bytes) -> dict[str, Any]:
    """The fields of a face-swap body, for ``validate_face_swap_fields(..., strict=True)``."""
    return _decode(body, dict[str, Any])


def _check_image_url(value: Any, loc: tuple[str | int, ...]) -> FieldError | None:
    if value is None or value == "":
        return FieldError(loc, "field required", "missing")
    if not isinstance(value, str):
        return FieldError(loc, "must be a string (an http(s) URL or a data: URI)", "type_error")
    lowered = value[:16].lower()
    if lowered.startswith("data:"):
        if ";base64," not in value[:256]:
            return FieldError(loc, "a data: URI must be base64 encoded (data:image/...;base64,...)")
        return None
    if not lowered.startswith(("http://", "https://")):
        return FieldError(loc, "must be an http(s) URL or a data: URI")
    if len(value) > MAX_URL_LENGTH:
        return FieldError(loc, f"URL longer than {MAX_URL_LENGTH} characters")
    return None


def validate_face_swap_fields(
    fields: dict[str, Any], loc: tuple[str | int, ...], *, strict: bool = False
) -> dict[str, Any]:
    """Check the face-swap fields of ``wf_json`` (other keys pass through) or, with
    ``strict``, of a face-swap body (no other key allowed); returns them normalised."""
    errors: list[FieldError] = []
    if strict:
        errors.extend(
            FieldError((*loc, name), f"unknown field `{name}`", "extra_forbidden")
            for name in fields
            if name not in FaceSwapOptions.__struct_fields__
        )
    for name in _IMAGE_FIELDS:
        error = _check_image_url(fields.get(name), (*loc, name))
        if error:
            errors.append(error)
    options, wrong = check_face_swap_options(fields)
    errors.extend(
        FieldError((*loc, name), message)
        for name, message in wrong.items()
        if name not in _IMAGE_FIELDS
    )
    if errors:
        raise ValidationFailed(errors)
    typed = {name: getattr(options, name) for name in FaceSwapOptions.__struct_fields__}
    return {name: typed.get(name, value) for name, value in fields.items()}


#: Caps on a ComfyUI task's ``input_data`` (the body limit caps its bytes): real API-format
#: graphs are a few hundred nodes at most and a handful of levels deep.
MAX_GRAPH_NODES = 2000
MAX_INPUT_DEPTH = 24


def _depth(value: object, limit: int) -> int:
    """How deep ``value`` nests (containers count one level each), stopping past ``limit``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend(
                (child, level) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _check_graph_size(input_data: dict[str, Any], loc: tuple[str, ...]) -> list[FieldError]:
    errors = []
    if _depth(input_data, MAX_INPUT_DEPTH) > MAX_INPUT_DEPTH:
        errors.append(FieldError(loc, f"nests deeper than {MAX_INPUT_DEPTH} levels"))
    graph = input_data.get("wf_json")
    if isinstance(graph, dict) and len(graph) > MAX_GRAPH_NODES:
        errors.append(
            FieldError((*loc, "wf_json"), f"has {len(graph)} nodes; at most {MAX_GRAPH_NODES}")
        )
    return errors


def validate_create(request: CreateTaskRequest) -> TaskSpec:
    """Validate a create request in the unified task format."""
    errors: list[FieldError] = []
    if request.taskId is not None and not _TASK_ID.match(request.taskId):
        errors.append(FieldError(("body", "taskId"), "must be 1-128 characters of A-Z a-z 0-9 _ -"))
    if request.status is not None and request.status != "PENDING":
        errors.append(FieldError(("body", "status"), "a new task's status can only be PENDING"))
    workflow = request.workflow or request.workflow_name
    if request.workflow and request.workflow_name and request.workflow != request.workflow_name:
        errors.append(
            FieldError(("body", "workflow_name"), "differs from workflow; give one of them")
        )
    environment = request.environment
    if workflow is None:
        workflow = FACE_SWAP_WORKFLOW if environment == FACE_SWAP_ENVIRONMENT else None
    if workflow is None:
        errors.append(FieldError(("body", "workflow"), "field required", "missing"))
    elif not _WORKFLOW.match(workflow):
        errors.append(
            FieldError(("body", "workflow"), "must be 1-128 characters of A-Z a-z 0-9 _ - .")
        )
    if environment is None:
        environment = FACE_SWAP_ENVIRONMENT if workflow == FACE_SWAP_WORKFLOW else COMFY_ENVIRONMENT
    if environment not in ENVIRONMENTS:
        errors.append(
            FieldError(("body", "environment"), f"must be one of {', '.join(ENVIRONMENTS)}")
        )
    if workflow == FACE_SWAP_WORKFLOW and environment != FACE_SWAP_ENVIRONMENT:
        errors.append(FieldError(("body", "environment"), "face_swap tasks run in face_swap"))
    input_data = dict(request.params.input_data)
    wf_loc = ("body", "params", "input_data", "wf_json")
    wf_json = input_data.get("wf_json")
    if workflow == FACE_SWAP_WORKFLOW:
        if not isinstance(wf_json, dict):
            errors.append(
                FieldError(
                    wf_loc, "field required: an object with source_url and target_url", "missing"
                )
            )
        else:
            try:
                input_data["wf_json"] = validate_face_swap_fields(wf_json, wf_loc)
            except ValidationFailed as exc:
                errors.extend(exc.errors)
    elif (
        workflow != PROBE_WORKFLOW
        and environment == COMFY_ENVIRONMENT
        and not isinstance(wf_json, dict)
    ):
        errors.append(FieldError(wf_loc, "field required: the ComfyUI API-format graph", "missing"))
    if environment == COMFY_ENVIRONMENT:
        errors.extend(_check_graph_size(input_data, ("body", "params", "input_data")))
    webhook_events = _check_webhook(request, errors)
    if errors:
        raise ValidationFailed(errors)
    assert workflow is not None and environment is not None
    return TaskSpec(
        request.taskId,
        workflow,
        environment,
        input_data,
        webhook_url=request.webhook_url,
        webhook_events=webhook_events,
    )


def _check_webhook(request: CreateTaskRequest, errors: list[FieldError]) -> tuple[str, ...]:
    """``webhook_url`` (http(s); the SSRF guard judges it again at delivery) and
    ``webhook_events`` (default: the final states)."""
    url = request.webhook_url
    if url is None:
        if request.webhook_events is not None:
            errors.append(FieldError(("body", "webhook_events"), "needs a webhook_url"))
        return ()
    if not url.lower().startswith(("http://", "https://")):
        errors.append(FieldError(("body", "webhook_url"), "must be an http(s) URL"))
    elif len(url) > MAX_URL_LENGTH:
        errors.append(
            FieldError(("body", "webhook_url"), f"URL longer than {MAX_URL_LENGTH} characters")
        )
    if request.webhook_events is None:
        return DEFAULT_WEBHOOK_EVENTS
    unknown = [name for name in request.webhook_events if name not in WEBHOOK_EVENTS]
    if unknown or not request.webhook_events:
        errors.append(
            FieldError(
                ("body", "webhook_events"),
                f"must be a non-empty list of {', '.join(WEBHOOK_EVENTS)}",
            )
        )
    return tuple(dict.fromkeys(request.webhook_events))
