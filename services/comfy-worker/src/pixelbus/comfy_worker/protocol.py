"""ComfyUI's messages and answers, read into plain values (pure: no I/O).

The shapes are those of ``ComfyUI-PROTOCOL.md``: ``POST /prompt`` refusals, WebSocket
frames, ``/history/{id}`` entries and ``/queue``.
"""

from __future__ import annotations

import json
import mimetypes
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pixelbus.comfy_worker.errors import ExecutionFailed, PromptInterrupted, PromptRejected

__all__ = [
    "FileRef",
    "HistoryEntry",
    "Message",
    "QueuePlace",
    "content_type_of",
    "execution_failure",
    "interrupted",
    "node_output",
    "parse_frame",
    "parse_history",
    "place_in_queue",
    "rejection",
]

Json = dict[str, Any]
QueuePlace = Literal["running", "pending"]

_NODE_ID = re.compile(r"Node ID '#([^']+)'")
_EXTRA_TYPES = {
    ".webp": "image/webp",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".latent": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".glb": "model/gltf-binary",
}


@dataclass(frozen=True, slots=True)
class Message:
    """A WebSocket text frame ``{"type", "data"}``; binary frames become ``binary``."""

    type: str
    data: Json

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None


def parse_frame(frame: str | bytes) -> Message | None:
    """One frame as a ``Message``; ``None`` for anything unreadable.

    Binary frames (previews, text) are summarised as ``binary`` with their event number."""
    if isinstance(frame, bytes):
        if len(frame) < 4:
            return None
        (event,) = struct.unpack(">I", frame[:4])
        return Message("binary", {"event": event, "size": len(frame)})
    try:
        body = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None
    data = body.get("data")
    return Message(body["type"], data if isinstance(data, dict) else {})


def rejection(status: int, body: Any, text: str) -> PromptRejected:
    """``POST /prompt``'s refusal as an error with ComfyUI's own words and node ids."""
    if not isinstance(body, dict):
        return PromptRejected(f"ComfyUI refused the prompt (HTTP {status}): {text[:500]}")
    error = _dict(body.get("error"))
    node_errors = body.get("node_errors")
    parts: list[str] = []
    first_node: str | None = None
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            first_node = first_node or str(node_id)
            parts.append(_node_error_text(str(node_id), entry))
    message = str(error.get("message") or "invalid prompt").rstrip(".")
    details = str(error.get("details") or "")
    if first_node is None and (match := _NODE_ID.search(details)):
        first_node = match.group(1)
    head = f"ComfyUI refused the graph ({error.get('type', 'invalid_prompt')}): {message}"
    if details and not parts:
        head += f" ({details})"
    return PromptRejected("; ".join([head, *parts]), node_id=first_node)


def _node_error_text(node_id: str, entry: Any) -> str:
    if not isinstance(entry, dict):
        return f"node {node_id}: {entry}"
    class_type = entry.get("class_type") or "?"
    errors = _list(entry.get("errors"))
    texts = []
    for error in errors:
        if isinstance(error, dict):
            detail = f": {error['details']}" if error.get("details") else ""
            texts.append(f"{error.get('message', error.get('type', 'error'))}{detail}")
    return f"node {node_id} ({class_type}): {', '.join(texts) or 'invalid'}"


def execution_failure(data: Json) -> ExecutionFailed:
    node_id = str(data.get("node_id") or "?")
    node_type = data.get("node_type") or "?"
    kind = data.get("exception_type") or "Exception"
    message = str(data.get("exception_message") or "").strip()
    return ExecutionFailed(
        f"node {node_id} ({node_type}) raised {kind}: {message}", node_id=node_id
    )


def interrupted(data: Json) -> PromptInterrupted:
    node_id = str(data.get("node_id") or "?")
    return PromptInterrupted(
        f"the prompt was interrupted on the ComfyUI server at node {node_id} "
        f"({data.get('node_type') or '?'})",
        node_id=node_id,
    )


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file an output node wrote, as ``/history`` names it (``/view`` parameters)."""

    node_id: str
    kind: str  # the output key: images, gifs, videos, audio, latents, …
    filename: str
    subfolder: str
    type: str  # output, temp, input

    @property
    def content_type(self) -> str:
        return content_type_of(self.filename)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    status: str  # success, error
    files: tuple[FileRef, ...]
    #: Everything of ``outputs`` that is not a file (text, flags such as ``animated``).
    values: dict[str, dict[str, list[Any]]]
    messages: tuple[tuple[str, Json], ...]

    def message(self, kind: str) -> Json | None:
        for name, data in self.messages:
            if name == kind:
                return data
        return None


def parse_history(body: Any, prompt_id: str) -> HistoryEntry | None:
    """The prompt's entry of ``/history/{id}``; ``None`` while it is not there (yet)."""
    if not isinstance(body, dict):
        return None
    entry = body.get(prompt_id)
    if not isinstance(entry, dict):
        return None
    status = _dict(entry.get("status"))
    files: list[FileRef] = []
    values: dict[str, dict[str, list[Any]]] = {}
    for node_id, output in _dict(entry.get("outputs")).items():
        node_files, node_values = node_output(str(node_id), output)
        files.extend(node_files)
        if node_values:
            values[str(node_id)] = node_values
    messages = []
    for message in _list(status.get("messages")):
        if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
            messages.append((str(message[0]), message[1]))
    return HistoryEntry(
        status=str(status.get("status_str") or "success"),
        files=tuple(files),
        values=values,
        messages=tuple(messages),
    )


def node_output(node_id: str, output: Any) -> tuple[list[FileRef], dict[str, list[Any]]]:
    """One node's UI output (a ``/history`` entry's ``outputs[node]``, or the ``output``
    of its ``executed`` message): the files it wrote, and every other value by key."""
    files: list[FileRef] = []
    values: dict[str, list[Any]] = {}
    if not isinstance(output, dict):  # ``executed`` of a cached node without UI: null
        return files, values
    for kind, items in output.items():
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                files.append(
                    FileRef(
                        node_id=node_id,
                        kind=str(kind),
                        filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                    )
                )
            else:
                values.setdefault(str(kind), []).append(item)
    return files, values


def place_in_queue(body: Any, prompt_id: str) -> QueuePlace | None:
    """Where ``/queue`` has the prompt: running, pending, or ``None`` (not queued)."""
    if not isinstance(body, dict):
        return None
    for place, key in (("running", "queue_running"), ("pending", "queue_pending")):
        for item in body.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return place  # type: ignore[return-value]
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def content_type_of(filename: str) -> str:
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"
