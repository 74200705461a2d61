"""The SDK on a recording transport, no server: the blocking client (which drives the
async one) and the async client send the same requests and read the same answers, task
and external-consumer calls alike; the event stream resumes and gives up as it should."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pixelbus.client import (
    ApiError,
    AsyncClient,
    Client,
    LeasedTask,
    Output,
    Task,
    Unreachable,
)

TASK = {"taskId": "task_1", "status": "PENDING"}
LEASED = {
    "taskId": "task_1",
    "workflow": "comfy",
    "environment": "comm",
    "params": {"input_data": {"wf_json": {}}},
    "attempt": 2,
    "lease": {"token": "t" * 12, "expires_in_s": 30},
}
ANSWERS: dict[tuple[str, str], Any] = {
    ("POST", "/api/tasks/create"): TASK,
    ("GET", "/api/tasks/task_1"): TASK,
    ("GET", "/api/tasks"): {"tasks": [TASK], "next": "c"},
    ("POST", "/api/tasks/task_1/cancel"): {**TASK, "status": "CANCELLED"},
    ("GET", "/api/tasks/task_1/webhooks"): {"deliveries": []},
    ("GET", "/api/comm/task/fetch"): LEASED,
    ("POST", "/api/comm/task/task_1/progress"): {"lease_expires_in_s": 30},
    ("POST", "/api/comm/task/task_1/complete"): {"taskId": "task_1", "accepted": True},
    ("POST", "/api/comm/task/task_1/fail"): {"taskId": "task_1", "final": False},
}


class Recorder:
    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.sent: list[tuple[str, str, str, bytes, str | None]] = []
        self._answer = answer or self.answer

    @staticmethod
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=ANSWERS[(request.method, request.url.path)])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.sent.append(
            (
                request.method,
                request.url.path,
                str(request.url.params),
                request.content,
                request.headers.get("idempotency-key"),
            )
        )
        return self._answer(request)


LEASE = LeasedTask.from_json(LEASED)
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("create", ({"workflow": "probe"},), {"idempotency_key": "k1"}),
    ("get", ("task_1",), {}),
    ("list", (), {"limit": 3, "status": "COMPLETED"}),
    ("cancel", ("task_1",), {"reason": "no"}),
    ("webhooks", ("task_1",), {}),
    ("fetch_task", (), {"wait": 5, "consumer": "box"}),
    ("report_progress", (LEASE,), {"fraction": 0.5, "node": "3"}),
    ("complete_task", (LEASE, [Output("a.png", b"\x89PNG", content_type="image/png")]), {}),
    ("fail_task", (LEASE, "x" * 5000), {"code": "c" * 200, "retryable": True}),
]


async def test_both_clients_send_the_same_requests_and_read_the_same_answers() -> None:
    blocking, asynchronous = Recorder(), Recorder()
    with Client("http://gw", transport=httpx.MockTransport(blocking)) as pb:
        answers = [getattr(pb, name)(*args, **kwargs) for name, args, kwargs in CALLS]
    async with AsyncClient("http://gw", transport=httpx.MockTransport(asynchronous)) as apb:
        assert [await getattr(apb, n)(*a, **k) for n, a, k in CALLS] == answers
    assert blocking.sent == asynchronous.sent
    created, got, (page, cursor), cancelled, _, leased, lease_s, completed, final = answers
    assert created == got == Task.from_json(TASK) and cancelled.status == "CANCELLED"
    assert [t.task_id for t in page] == ["task_1"] and cursor == "c"
    assert leased == LEASE and (leased.attempt, leased.input_data) == (2, {"wf_json": {}})
    assert (lease_s, completed, final) == (30.0, None, False)
    sent = {(method, path): (params, body) for method, path, params, body, _ in blocking.sent}
    assert blocking.sent[0][4] == "k1"
    assert sent[("GET", "/api/tasks")][0] == "limit=3&status=COMPLETED"
    assert sent[("GET", "/api/comm/task/fetch")][0] == "environment=comm&wait=5&consumer=box"
    [output] = json.loads(sent[("POST", "/api/comm/task/task_1/complete")][1])["outputs"]
    assert output == {
        "filename": "a.png",
        "content_type": "image/png",
        "url": None,
        "node_id": None,
        "data_base64": "iVBORw==",
    }
    failed = json.loads(sent[("POST", "/api/comm/task/task_1/fail")][1])
    assert (len(failed["message"]), len(failed["code"])) == (4000, 100)  # the gateway's limits


def test_no_task_to_lease_is_none_and_a_lost_lease_is_a_409() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/fetch"):
            return httpx.Response(204)
        return httpx.Response(409, json={"detail": "lease lost: it expired"})

    with Client("http://gw", transport=httpx.MockTransport(Recorder(answer))) as pb:
        assert pb.fetch_task() is None
        with pytest.raises(ApiError, match="lease lost") as lost:
            pb.report_progress(LEASE)
    assert lost.value.status == 409


def stream(*events: str) -> bytes:
    return "".join(f"{e}\n\n" for e in events).encode()


def test_events_resume_from_the_last_id_and_end_at_the_end_event() -> None:
    def state(event_id: int, status: str) -> str:
        return f"id: {event_id}\nevent: state\ndata: {json.dumps({**TASK, 'status': status})}"

    bodies = [
        stream(": hello", state(4, "PENDING")),  # ends without its end event
        stream(state(7, "COMPLETED"), "event: end\ndata: {}"),
    ]
    resumed: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        resumed.append(request.headers.get("last-event-id"))
        return httpx.Response(200, content=bodies.pop(0))

    with Client("http://gw", transport=httpx.MockTransport(Recorder(answer))) as pb:
        states = [t.status for t in pb.events("task_1")]
    assert states == ["PENDING", "COMPLETED"] and resumed == [None, "4"]


async def test_events_give_up_after_three_failures_in_a_row() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with AsyncClient("http://gw", transport=httpx.MockTransport(refuse)) as pb:
        with pytest.raises(Unreachable, match="cannot reach the gateway at http://gw"):
            [t async for t in pb.events("task_1")]
