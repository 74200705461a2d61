"""Validation of client requests. Pure: values in, a normalised task spec or errors out.

Errors are ``FieldError``s whose ``loc`` is the path of the offending field in the
request body, so that the gateway can answer 422 naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from pixelbus.contracts.subjects import ENVIRONMENTS
from pixelbus.contracts.task import CreateTaskRequest, FaceSwapRequest
from pixelbus.contracts.webhooks import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS

__all__ = [
    "FACE_ENHANCERS",
    "FACE_ORDERS",
    "FACE_SWAP_MODELS",
    "FACE_SWAP_WORKFLOW",
    "MAX_SIDE",
    "MIN_SIDE",
    "OUTPUT_FORMATS",
    "PROBE_WORKFLOW",
    "FieldError",
    "TaskSpec",
    "ValidationFailed",
    "decode_create_request",
    "decode_face_swap_request",
    "parse_resolution",
    "validate_create",
    "validate_face_swap_fields",
]

FACE_SWAP_WORKFLOW = "face_swap"
PROBE_WORKFLOW = "probe"
#: Models a face-swap task may name. ``builtin`` is the offline landmark engine;
#: ``remote`` the external service at ``FACE_SWAP_API_URL``.
FACE_SWAP_MODELS = ("builtin", "inswapper_128", "inswapper_128_fp16", "remote")
#: Face enhancers a face-swap task may ask for (``enhancer``).
FACE_ENHANCERS = ("gfpgan_1.4",)
#: How faces are numbered for ``source_face_index`` / ``target_face_index``.
FACE_ORDERS = ("left-right", "right-left", "top-bottom", "bottom-top", "large-small", "small-large")
#: ``output_format`` values; ``jpg`` is normalised to ``jpeg``.
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_FACE_INDEX = 1000
MIN_SIDE = 16
MAX_SIDE = 8192
MAX_URL_LENGTH = 2048
_TASK_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_WORKFLOW = re.compile(r"^[A-Za-z0-9_\-.]{1,128}$")
_RESOLUTION = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
_IMAGE_FIELDS = ("source_url", "target_url")


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


def decode_create_request(body: bytes) -> CreateTaskRequest:
    try:
        return msgspec.json.decode(body, type=CreateTaskRequest)
    except RecursionError:
        raise ValidationFailed([_TOO_DEEP]) from None
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_decode_errors(exc, ("body",))]) from exc
    except msgspec.DecodeError as exc:
        raise ValidationFailed(
            [FieldError(("body",), f"invalid JSON: {exc}", "json_invalid")]
        ) from exc


def decode_face_swap_request(body: bytes) -> FaceSwapRequest:
    try:
        return msgspec.json.decode(body, type=FaceSwapRequest)
    except RecursionError:
        raise ValidationFailed([_TOO_DEEP]) from None
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_decode_errors(exc, ("body",))]) from exc
    except msgspec.DecodeError as exc:
        raise ValidationFailed(
            [FieldError(("body",), f"invalid JSON: {exc}", "json_invalid")]
        ) from exc


def parse_resolution(value: str) -> tuple[int, int]:
    """``"1024x768"`` → ``(1024, 768)``; raises ``ValueError`` with a reason."""
    match = _RESOLUTION.match(value)
    if not match:
        raise ValueError("must look like WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"each side must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    return width, height


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


def validate_face_swap_fields(fields: dict[str, Any], loc: tuple[str | int, ...]) -> dict[str, Any]:
    """Check the face-swap fields of ``wf_json``; returns them normalised."""
    errors: list[FieldError] = []
    for name in _IMAGE_FIELDS:
        error = _check_image_url(fields.get(name), (*loc, name))
        if error:
            errors.append(error)
    normalised = dict(fields)
    resolution = fields.get("resolution")
    if resolution is not None:
        if not isinstance(resolution, str):
            errors.append(FieldError((*loc, "resolution"), "must be a string like 1024x1024"))
        else:
            try:
                width, height = parse_resolution(resolution)
                normalised["resolution"] = f"{width}x{height}"
            except ValueError as exc:
                errors.append(FieldError((*loc, "resolution"), str(exc)))
    model = fields.get("model")
    if model is not None and model not in FACE_SWAP_MODELS:
        known = ", ".join(FACE_SWAP_MODELS)
        errors.append(FieldError((*loc, "model"), f"unknown model {model!r}; known: {known}"))
    errors.extend(_check_face_swap_options(fields, normalised, loc))
    if errors:
        raise ValidationFailed(errors)
    return normalised


def _check_face_swap_options(
    fields: dict[str, Any], normalised: dict[str, Any], loc: tuple[str | int, ...]
) -> list[FieldError]:
    """The optional face selection, enhancer and output fields."""
    errors: list[FieldError] = []
    for name in ("source_face_index", "target_face_index"):
        value = fields.get(name)
        if value is None or (name == "target_face_index" and value == "many"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ' (or "many")' if name == "target_face_index" else ""
            errors.append(FieldError((*loc, name), f"must be an integer{hint}", "type_error"))
        elif not 0 <= value <= MAX_FACE_INDEX:
            errors.append(FieldError((*loc, name), f"must be between 0 and {MAX_FACE_INDEX}"))
    choices: dict[str, tuple[str, ...]] = {
        "face_order": FACE_ORDERS,
        "enhancer": FACE_ENHANCERS,
    }
    for name, allowed in choices.items():
        value = fields.get(name)
        if value is not None and value not in allowed:
            errors.append(FieldError((*loc, name), f"must be one of {', '.join(allowed)}"))
    output_format = fields.get("output_format")
    if output_format is not None:
        lowered = output_format.lower() if isinstance(output_format, str) else None
        lowered = "jpeg" if lowered == "jpg" else lowered
        if lowered not in OUTPUT_FORMATS:
            errors.append(
                FieldError((*loc, "output_format"), f"must be one of {', '.join(OUTPUT_FORMATS)}")
            )
        else:
            normalised["output_format"] = lowered
    quality = fields.get("quality")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
    ):
        errors.append(FieldError((*loc, "quality"), "must be an integer between 1 and 100"))
    blend = fields.get("enhancer_blend")
    if blend is not None and (
        isinstance(blend, bool) or not isinstance(blend, int | float) or not 0 <= blend <= 1
    ):
        errors.append(FieldError((*loc, "enhancer_blend"), "must be a number between 0 and 1"))
    return errors


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
        workflow = FACE_SWAP_WORKFLOW if environment == FACE_SWAP_WORKFLOW else None
    if workflow is None:
        errors.append(FieldError(("body", "workflow"), "field required", "missing"))
    elif not _WORKFLOW.match(workflow):
        errors.append(
            FieldError(("body", "workflow"), "must be 1-128 characters of A-Z a-z 0-9 _ - .")
        )
    if environment is None:
        environment = FACE_SWAP_WORKFLOW if workflow == FACE_SWAP_WORKFLOW else "comm"
    if environment not in ENVIRONMENTS:
        errors.append(
            FieldError(("body", "environment"), f"must be one of {', '.join(ENVIRONMENTS)}")
        )
    if workflow == FACE_SWAP_WORKFLOW and environment != FACE_SWAP_WORKFLOW:
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
    elif workflow != PROBE_WORKFLOW and environment == "comm" and not isinstance(wf_json, dict):
        errors.append(FieldError(wf_loc, "field required: the ComfyUI API-format graph", "missing"))
    if environment == "comm":
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
