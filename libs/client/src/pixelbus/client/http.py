"""Reading the gateway's answers: JSON, errors, event-stream states (pure)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from pixelbus.client.errors import ApiError, Unreachable
from pixelbus.client.sse import SseEvent
from pixelbus.client.task import Task

__all__ = ["check", "state_of", "unreachable"]


def check(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer, or ``ApiError``."""
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise ApiError(response.status_code, detail)


def unreachable(base_url: str, exc: httpx.HTTPError) -> Unreachable:
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"the gateway at {base_url} did not answer in time")
    return Unreachable(f"cannot reach the gateway at {base_url}: {exc}")


def state_of(event: SseEvent) -> Task | None:
    return Task.from_json(json.loads(event.data)) if event.event == "state" else None
