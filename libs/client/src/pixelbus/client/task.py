"""A task as the API shows it, a task leased by an external consumer, and the request
bodies the SDK sends (pure)."""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelbus.contracts.subjects import COMFY_ENVIRONMENT, FACE_SWAP_ENVIRONMENT

__all__ = [
    "FINAL",
    "LeasedTask",
    "Output",
    "Task",
    "face_swap_body",
    "image_ref",
    "workflow_body",
]

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclass(frozen=True)
class Task:
    task_id: str
    status: str
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    queue_position: int | None = None
    workflow: str | None = None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(
            task_id=data["taskId"],
            status=data["status"],
            progress=data.get("progress"),
            result=data.get("result"),
            error=data.get("error"),
            queue_position=data.get("queue_position"),
            workflow=data.get("workflow"),
            created_at=data.get("created_at"),
            raw=data,
        )

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def fraction(self) -> float | None:
        return (self.progress or {}).get("fraction")

    @property
    def frames(self) -> tuple[int, int] | None:
        """A video task's progress in frames: (swapped so far, in all); ``None`` for a
        task that does not count frames."""
        progress = self.progress or {}
        total = progress.get("frames_total")
        if total is None:
            return None
        return int(progress.get("frames_done") or 0), int(total)

    @property
    def output_urls(self) -> list[str]:
        return [o["url"] for o in (self.result or {}).get("outputs", [])]


@dataclass(frozen=True)
class LeasedTask:
    """A task leased by an external consumer (``fetch_task``): report progress within
    ``expires_in_s`` to keep the lease, then complete or fail it."""

    task_id: str
    token: str
    attempt: int
    expires_in_s: float
    workflow: str
    environment: str
    input_data: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeasedTask:
        lease, params = data["lease"], data.get("params") or {}
        return cls(
            data["taskId"],
            lease["token"],
            int(data.get("attempt") or 1),
            float(lease.get("expires_in_s") or 0),
            str(data.get("workflow")),
            str(data.get("environment")),
            params.get("input_data") or {},
        )


@dataclass(frozen=True)
class Output:
    """An output handed over by ``complete_task``: its bytes (stored through the gateway)
    or the URL where it is stored already."""

    filename: str
    data: bytes | None = None
    url: str | None = None
    content_type: str = "application/octet-stream"
    node_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {"filename": self.filename, "content_type": self.content_type, "url": self.url}
        if self.data is not None:
            body["data_base64"] = base64.b64encode(self.data).decode()
        return {**body, "node_id": self.node_id}


def image_ref(value: str) -> str:
    """A URL (or ``data:`` URI) as it is, a local file as a ``data:`` URI."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{media};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _task_body(
    workflow: str, environment: str, wf_json: dict[str, Any], webhook_url: str | None
) -> dict[str, Any]:
    """A ``POST /api/tasks/create`` body (the unified task format)."""
    body: dict[str, Any] = {
        "workflow": workflow,
        "environment": environment,
        "params": {"input_data": {"wf_json": wf_json}},
    }
    if webhook_url:
        body["webhook_url"] = webhook_url
    return body


def face_swap_body(
    source: str, target: str, *, webhook_url: str | None = None, **options: Any
) -> dict[str, Any]:
    wf = {"source_url": image_ref(source), "target_url": image_ref(target), **options}
    return _task_body("face_swap", FACE_SWAP_ENVIRONMENT, wf, webhook_url)


def workflow_body(
    graph: dict[str, Any], *, workflow: str = "comfy", webhook_url: str | None = None
) -> dict[str, Any]:
    return _task_body(workflow, COMFY_ENVIRONMENT, graph, webhook_url)
