"""External consumers: lease, heartbeat, complete; a vanished consumer loses its lease."""

from __future__ import annotations

import base64

import pytest

from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.waiting import wait_for_state
from tests.stack import Stack

pytestmark = pytest.mark.e2e

COMM_TASK = {
    "workflow": "txt2img",
    "environment": "comm",
    "params": {"input_data": {"wf_json": {"3": {"class_type": "KSampler", "inputs": {}}}}},
}


async def test_consumer_takes_heartbeats_and_completes_a_task(stack: Stack) -> None:
    task_id = (await stack.http.post("/api/tasks/create", json=COMM_TASK)).json()["taskId"]
    leased = await stack.http.get("/api/comm/task/fetch?wait=5&consumer=gpu-box-1")
    assert leased.status_code == 200, leased.text
    task = leased.json()
    assert task["taskId"] == task_id and task["params"]["input_data"]["wf_json"]["3"]
    token = task["lease"]["token"]
    state = await wait_for_state(
        await stack.kv(), task_id, lambda s: s.status is TaskStatus.PROCESSING
    )
    assert state.worker == "external:gpu-box-1"
    progress = await stack.http.post(
        f"/api/comm/task/{task_id}/progress",
        json={"lease_token": token, "fraction": 0.5, "node": "3"},
    )
    assert progress.status_code == 200
    await wait_for_state(
        await stack.kv(), task_id, lambda s: s.progress is not None and s.progress.fraction == 0.5
    )
    image = base64.b64encode(b"\x89PNG fake bytes of an output").decode()
    done = await stack.http.post(
        f"/api/comm/task/{task_id}/complete",
        json={
            "lease_token": token,
            "outputs": [{"filename": "out.png", "content_type": "image/png", "data_base64": image}],
        },
    )
    assert done.status_code == 200, done.text
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 20)
    assert final.status is TaskStatus.COMPLETED
    assert final.outputs[0].filename == "out.png" and final.outputs[0].provider == "local"
    again = await stack.http.post(f"/api/comm/task/{task_id}/progress", json={"lease_token": token})
    assert again.status_code == 409


async def test_vanished_consumer_loses_its_lease(stack: Stack) -> None:
    task_id = (await stack.http.post("/api/tasks/create", json=COMM_TASK)).json()["taskId"]
    first = (await stack.http.get("/api/comm/task/fetch?wait=5&consumer=flaky")).json()
    assert first["taskId"] == task_id and first["attempt"] == 1
    # The first consumer goes silent; after AckWait (2 s in tests) the task is handed out again.
    second = await stack.http.get("/api/comm/task/fetch?wait=10&consumer=steady")
    assert second.status_code == 200
    assert second.json()["taskId"] == task_id and second.json()["attempt"] == 2
    stale = await stack.http.post(
        f"/api/comm/task/{task_id}/complete",
        json={"lease_token": first["lease"]["token"], "outputs": []},
    )
    assert stale.status_code == 409 and "lease lost" in stale.json()["detail"]
    done = await stack.http.post(
        f"/api/comm/task/{task_id}/complete",
        json={
            "lease_token": second.json()["lease"]["token"],
            "outputs": [{"filename": "x.png", "url": "https://cdn.example.com/x.png"}],
        },
    )
    assert done.status_code == 200
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 10)
    assert final.status is TaskStatus.COMPLETED and final.worker == "external:steady"


async def test_forged_token_is_refused(stack: Stack) -> None:
    task_id = (await stack.http.post("/api/tasks/create", json=COMM_TASK)).json()["taskId"]
    token = (await stack.http.get("/api/comm/task/fetch?wait=5")).json()["lease"]["token"]
    body, mac = token.split(".")
    forged = f"{body}.{mac[:-2]}AA"
    response = await stack.http.post(
        f"/api/comm/task/{task_id}/fail", json={"lease_token": forged, "message": "x"}
    )
    assert response.status_code == 403


async def test_consumer_failure_is_final_unless_retryable(stack: Stack) -> None:
    task_id = (await stack.http.post("/api/tasks/create", json=COMM_TASK)).json()["taskId"]
    token = (await stack.http.get("/api/comm/task/fetch?wait=5")).json()["lease"]["token"]
    failed = await stack.http.post(
        f"/api/comm/task/{task_id}/fail",
        json={"lease_token": token, "message": "CUDA out of memory", "retryable": True},
    )
    assert failed.json()["final"] is False
    again = await stack.http.get("/api/comm/task/fetch?wait=5")
    assert again.json()["taskId"] == task_id and again.json()["attempt"] == 2
    token = again.json()["lease"]["token"]
    failed = await stack.http.post(
        f"/api/comm/task/{task_id}/fail",
        json={"lease_token": token, "message": "bad graph", "code": "invalid_graph"},
    )
    assert failed.json()["final"] is True
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 10)
    assert final.status is TaskStatus.FAILED and final.error is not None
    assert final.error.message == "bad graph"


async def test_task_whose_consumers_all_vanish_ends_failed_not_processing(stack: Stack) -> None:
    """Every lease lapses (3 deliveries in tests): the MAX_DELIVERIES advisory fails it."""
    task_id = (await stack.http.post("/api/tasks/create", json=COMM_TASK)).json()["taskId"]
    for attempt in (1, 2, 3):
        leased = await stack.http.get(f"/api/comm/task/fetch?wait=10&consumer=flaky-{attempt}")
        assert leased.status_code == 200 and leased.json()["attempt"] == attempt
    # The next puller gets no fourth delivery: JetStream gives up (the advisory is raised
    # when the message would be redelivered), and the gateway records why.
    assert (await stack.http.get("/api/comm/task/fetch?wait=4")).status_code == 204
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 15)
    assert final.status is TaskStatus.FAILED and final.error is not None
    assert final.error.code == "attempts_exhausted"
    assert "gave up after 3 attempts" in final.error.message
