"""Inline files (``data:`` URIs) are moved out of the event into the Object Store.

Events stay small (JetStream messages are capped at 1 MiB, and every replica stores each
one); the task keeps a ``pixelbus-object:`` reference that only the workers resolve, and
only for their own task. Any string of ``input_data`` that is a ``data:`` URI is moved,
wherever it is: the face-swap fields, a ComfyUI graph's ``LoadImage`` input, a stored
workflow's parameter.
"""

from __future__ import annotations

import uuid
from typing import Any

from nats.js.object_store import ObjectStore

from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX, sanitize_token
from pixelbus.contracts.validation import FieldError, TaskSpec, ValidationFailed
from pixelbus.media.data_uri import decode_data_uri
from pixelbus.media.errors import MediaError

__all__ = ["store_inline_images"]

Path = tuple[str | int, ...]


def _inline_files(value: Any, path: Path = ()) -> list[tuple[Path, str]]:
    """Every ``data:`` string in ``value`` with its path, depth first."""
    if isinstance(value, str):
        return [(path, value)] if value[:5].lower() == "data:" else []
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _inline_files(v, (*path, k))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _inline_files(v, (*path, i))]
    return []


def _replace(value: Any, path: Path, new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    assert isinstance(head, int)
    copy[head] = _replace(copy[head], rest, new)
    return copy


async def store_inline_images(
    objects: ObjectStore, task_id: str, spec: TaskSpec, *, max_bytes: int
) -> dict[str, Any]:
    input_data: dict[str, Any] = spec.input_data
    found = _inline_files(input_data)
    # Names of this request's own: a second create of the same task id (a retry, a race)
    # never overwrites the inputs a worker may be reading; the loser's are removed.
    nonce = uuid.uuid4().hex[:8]
    errors: list[FieldError] = []
    for path, uri in found:
        loc = ("body", "params", "input_data", *(str(p) for p in path))
        try:
            data, _ = decode_data_uri(uri, max_bytes=max_bytes)
        except MediaError as exc:
            errors.append(FieldError(loc, str(exc)))
            continue
        name = f"inputs/{task_id}/{nonce}-{sanitize_token('.'.join(str(p) for p in path))}"
        await objects.put(name, data)
        input_data = _replace(input_data, path, f"{INPUT_OBJECT_PREFIX}{name}")
    if errors:
        raise ValidationFailed(errors)
    return input_data
