"""The pixelbus HTTP API as values (pure, no I/O): each ``Call`` is the request to send
and how to read its answer. ``Client`` and ``AsyncClient`` only send calls, so that both
speak the API from this one description.

The task API: ``create``, ``get``, ``list_tasks``, ``cancel``, ``webhooks``, and ``Follow``
for a task's event stream. The external-consumer API (``/api/comm/task/*``):
``fetch_task`` leases a task, ``report_progress`` keeps the lease, ``complete_task`` or
``fail_task`` ends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from pixelbus.client.errors import ApiError, Unreachable
from pixelbus.client.sse import SseParser
from pixelbus.client.task import LeasedTask, Output, Task

__all__ = [
    "Call",
    "Follow",
    "cancel",
    "check",
    "complete_task",
    "create",
    "fail_task",
    "fetch_task",
    "get",
    "headers",
    "list_tasks",
    "report_progress",
    "unreachable",
    "webhooks",
]

T = TypeVar("T")


def _nothing(_: Any) -> None:
    return None


def _as_is(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] | None = None

    def answer(self, response: httpx.Response) -> T:
        """What the call returns, or ``ApiError``."""
        return self.read(check(response))


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer (None when empty), or ``ApiError``."""
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


def _header(name: str, value: str | None) -> dict[str, str]:
    return {name: value} if value else {}


def create(body: dict[str, Any], idempotency_key: str | None = None) -> Call[Task]:
    return Call(
        "POST",
        "/api/tasks/create",
        Task.from_json,
        json=body,
        headers=_header("Idempotency-Key", idempotency_key),
    )


def get(task_id: str) -> Call[Task]:
    return Call("GET", f"/api/tasks/{task_id}", Task.from_json)


def _page(page: dict[str, Any]) -> tuple[list[Task], str | None]:
    return [Task.from_json(t) for t in page["tasks"]], page["next"]


def list_tasks(
    limit: int, before: str | None, status: str | None
) -> Call[tuple[list[Task], str | None]]:
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("before", before), ("status", status)) if v})
    return Call("GET", "/api/tasks", _page, params=params)


def cancel(task_id: str, reason: str | None) -> Call[Task]:
    params = {"reason": reason} if reason else {}
    return Call("POST", f"/api/tasks/{task_id}/cancel", Task.from_json, params=params)


def webhooks(task_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/api/tasks/{task_id}/webhooks", _as_is)


class Follow:
    """Following a task's event stream across dropped connections: the request of each
    connection (resumed with ``Last-Event-ID``), the states read from its lines, and the
    pause before resuming (three failures in a row at most)."""

    def __init__(self, task_id: str, last_event_id: str | None) -> None:
        self.path = f"/api/tasks/{task_id}/events"
        self.last_event_id = last_event_id
        self.ended = False  # the stream's end event came: the task is final
        self._failures = 0
        self._parser = SseParser()

    def headers(self) -> dict[str, str]:
        """The headers of the next connection, which starts a new parse."""
        self._parser = SseParser()
        return _header("Last-Event-ID", self.last_event_id)

    def feed(self, line: str) -> Task | None:
        """One line of the stream; a state when it completes one."""
        event = self._parser.feed(line)
        if event is None:
            return None
        if event.event == "end":
            self.ended = True
        if event.event != "state":
            return None
        self._failures = 0
        self.last_event_id = event.id or self.last_event_id
        return Task.from_json(json.loads(event.data))

    def retry_in(self, base_url: str, error: httpx.HTTPError | None) -> float:
        """Seconds to wait before resuming a stream that dropped (``error``) or ended
        without its end event (None); ``Unreachable`` after the third failure in a row."""
        self._failures += 1
        if self._failures >= 3:
            ended = httpx.RemoteProtocolError("the stream ended early")
            raise unreachable(base_url, error or ended)
        return 0.2 * self._failures


def _leased(data: dict[str, Any] | None) -> LeasedTask | None:
    return None if data is None else LeasedTask.from_json(data)  # None: 204, nothing came


def fetch_task(environment: str, wait: float, consumer: str) -> Call[LeasedTask | None]:
    params = {"environment": environment, "wait": wait, "consumer": consumer}
    return Call("GET", "/api/comm/task/fetch", _leased, params=params)


def report_progress(
    lease: LeasedTask, fraction: float | None, node: str | None, message: str | None
) -> Call[float]:
    body = {"lease_token": lease.token, "fraction": fraction, "node": node, "message": message}
    return Call(
        "POST",
        f"/api/comm/task/{lease.task_id}/progress",
        lambda answer: float(answer["lease_expires_in_s"]),
        json=body,
    )


def complete_task(
    lease: LeasedTask, outputs: Sequence[Output], result: dict[str, Any] | None
) -> Call[None]:
    body = {"lease_token": lease.token, "outputs": [o.to_json() for o in outputs]}
    return Call(
        "POST",
        f"/api/comm/task/{lease.task_id}/complete",
        _nothing,
        json={**body, "result": result},
    )


def fail_task(lease: LeasedTask, message: str, code: str, retryable: bool) -> Call[bool]:
    """The message and code are cut to the gateway's limits (4000 and 100 characters)."""
    body = {"lease_token": lease.token, "message": message[:4000], "code": code[:100]}
    return Call(
        "POST",
        f"/api/comm/task/{lease.task_id}/fail",
        lambda answer: bool(answer["final"]),
        json={**body, "retryable": retryable},
    )
