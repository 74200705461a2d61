"""pixelbus.client: the Python SDK of the pixelbus HTTP API (httpx, sync and async).

    with Client("http://127.0.0.1:8000", api_key=...) as pb:
        task = pb.face_swap("me.jpg", "https://example.com/poster.jpg")
        done = pb.wait(task.task_id, on_progress=lambda t: print(t.status, t.fraction))

External consumers lease tasks with ``fetch_task``, keep the lease with
``report_progress`` and end it with ``complete_task`` or ``fail_task``.
``verify_webhook`` checks a received webhook's Standard Webhooks signature.
"""

from pixelbus.client.async_client import AsyncClient
from pixelbus.client.errors import ApiError, PixelbusError, Unreachable, WaitTimeout
from pixelbus.client.sync_client import Client
from pixelbus.client.task import (
    FINAL,
    LeasedTask,
    Output,
    Task,
    face_swap_body,
    image_ref,
    workflow_body,
)
from pixelbus.contracts.webhooks import InvalidSignature
from pixelbus.contracts.webhooks import verify as verify_webhook

__all__ = [
    "FINAL",
    "ApiError",
    "AsyncClient",
    "Client",
    "InvalidSignature",
    "LeasedTask",
    "Output",
    "PixelbusError",
    "Task",
    "Unreachable",
    "WaitTimeout",
    "face_swap_body",
    "image_ref",
    "verify_webhook",
    "workflow_body",
]
