"""Inline images (``data:`` URIs) are moved out of the event into the Object Store.

Events stay small (JetStream messages are capped, and every replica stores each one);
the task keeps a ``pixelbus-object:`` reference that only the workers resolve. Clients
cannot send that scheme themselves: validation admits only http(s) and data: URLs.
"""

from __future__ import annotations

from typing import Any

from nats.js.object_store import ObjectStore

from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX
from pixelbus.contracts.validation import FACE_SWAP_WORKFLOW, FieldError, TaskSpec, ValidationFailed
from pixelbus.media.data_uri import decode_data_uri
from pixelbus.media.errors import MediaError

__all__ = ["store_inline_images"]
_IMAGE_FIELDS = ("source_url", "target_url")


async def store_inline_images(
    objects: ObjectStore, task_id: str, spec: TaskSpec, *, max_bytes: int
) -> dict[str, Any]:
    if spec.workflow != FACE_SWAP_WORKFLOW:
        return spec.input_data
    wf_json = dict(spec.input_data.get("wf_json") or {})
    errors: list[FieldError] = []
    for field in _IMAGE_FIELDS:
        value = wf_json.get(field)
        if not isinstance(value, str) or value[:5].lower() != "data:":
            continue
        loc = ("body", "params", "input_data", "wf_json", field)
        try:
            data, _ = decode_data_uri(value, max_bytes=max_bytes)
        except MediaError as exc:
            errors.append(FieldError(loc, str(exc)))
            continue
        name = f"inputs/{task_id}/{field}"
        await objects.put(name, data)
        wf_json[field] = f"{INPUT_OBJECT_PREFIX}{name}"
    if errors:
        raise ValidationFailed(errors)
    return {**spec.input_data, "wf_json": wf_json}
