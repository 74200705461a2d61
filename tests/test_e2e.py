"""End to end: HTTP → gateway → JetStream → worker → uploader → KV, on a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixelbus.contracts.subjects import TASK_STREAM, WORKERS_BUCKET
from pixelbus.contracts.task import TaskStatus
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.state import decode_state
from pixelbus.testkit.waiting import wait_for_state
from tests.conftest import data_uri
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def face_swap_body(source: str, target: str, **extra: Any) -> dict[str, Any]:
    wf = {"source_url": source, "target_url": target, **extra}
    return {
        "workflow": "face_swap",
        "environment": "face_swap",
        "params": {"input_data": {"wf_json": wf}},
    }


async def statuses_until_final(stack: Stack, task_id: str, seen: list[str]) -> None:
    kv = await stack.kv()
    watcher = await kv.watch(task_id)
    try:
        while True:
            entry = await watcher.updates(timeout=60)
            if entry is None or entry.value is None:
                continue
            state = decode_state(entry.value)
            if not seen or seen[-1] != state.status.value:
                seen.append(state.status.value)
            if state.is_final:
                return
    finally:
        await watcher.stop()


async def test_face_swap_of_two_real_photos_completes(
    stack: Stack, astronaut: Path, grace_hopper: Path
) -> None:
    body = face_swap_body(
        data_uri(astronaut, "image/png"), data_uri(grace_hopper, "image/jpeg"), resolution="256x300"
    )
    created = await stack.http.post("/api/tasks/create", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["taskId"]
    assert created.json()["status"] == "PENDING"
    first = await stack.http.get(f"/api/tasks/{task_id}")
    assert first.json()["status"] in ("PENDING", "PROCESSING")
    seen: list[str] = [first.json()["status"]]
    await asyncio.wait_for(statuses_until_final(stack, task_id, seen), 60)
    # forward only, through PROCESSING: the first read may already have found it started
    assert seen in (["PENDING", "PROCESSING", "COMPLETED"], ["PROCESSING", "COMPLETED"]), seen
    done = (await stack.http.get(f"/api/tasks/{task_id}")).json()
    assert done["status"] == "COMPLETED"
    assert done["params"]["input_data"]["wf_json"]["source_url"].startswith("pixelbus-object:")
    [output] = done["result"]["outputs"]
    assert output["content_type"] == "image/png"
    image_response = await stack.http.get(output["url"].removeprefix(stack.base_url))
    assert image_response.status_code == 200
    result = np.asarray(Image.open(io.BytesIO(image_response.content)).convert("RGB")).astype(int)
    assert result.shape == (300, 256, 3)
    target = np.asarray(Image.open(grace_hopper).convert("RGB").resize((256, 300))).astype(int)
    face_box = (slice(40, 170), slice(75, 185))  # Grace Hopper's face at 256x300
    inside = np.abs(result[face_box] - target[face_box]).mean()
    corner = np.abs(result[260:, :40] - target[260:, :40]).mean()
    assert inside > 8, f"no visible swap inside the face box (mean diff {inside:.1f})"
    assert corner < 4, f"the image changed far from the face (mean diff {corner:.1f})"


async def test_missing_target_url_is_422_and_nothing_is_published(stack: Stack) -> None:
    js = stack.nc.jetstream()
    before = (await js.stream_info(TASK_STREAM)).state.messages
    response = await stack.http.post(
        "/api/tasks/create", json=face_swap_body("https://example.com/a.jpg", "")
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "target_url"
    direct = await stack.http.post(
        "/api/face-swap/process", json={"source_url": "https://e.com/a.jpg"}
    )
    assert direct.status_code == 422 and direct.json()["detail"][0]["loc"] == ["body", "target_url"]
    assert (await js.stream_info(TASK_STREAM)).state.messages == before


class _CountingHandler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"not an image")

    def log_message(self, *args: object) -> None:
        pass


async def test_loopback_url_fails_with_ssrf_message_and_no_request(
    stack: Stack, astronaut: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/face.jpg"
        created = await stack.http.post(
            "/api/tasks/create", json=face_swap_body(url, data_uri(astronaut, "image/png"))
        )
        task_id = created.json()["taskId"]
        state = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
    finally:
        server.shutdown()
    assert state.status is TaskStatus.FAILED
    assert state.error is not None and "source_url" in state.error.message
    assert state.error.code == "ssrf_blocked", state.error
    assert "it is a loopback address" in state.error.message
    assert _CountingHandler.hits == 0


async def test_non_image_body_fails_with_a_clear_message(stack: Stack, astronaut: Path) -> None:
    text = "data:text/plain;base64," + base64.b64encode(b"hello, I am not a photo").decode()
    response = await stack.http.post(
        "/api/face-swap/process?wait=30",
        json={"source_url": data_uri(astronaut, "image/png"), "target_url": text},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "FAILED"
    assert "target_url" in body["error"]["message"] and "not an image" in body["error"]["message"]


async def test_face_swap_process_answers_202_when_the_wait_runs_out(
    stack: Stack, astronaut: Path, grace_hopper: Path
) -> None:
    response = await stack.http.post(
        "/api/face-swap/process?wait=0",
        json={
            "source_url": data_uri(astronaut, "image/png"),
            "target_url": data_uri(grace_hopper, "image/jpeg"),
        },
    )
    assert response.status_code == 202
    task_id = response.json()["taskId"]
    assert response.headers["location"] == f"/api/tasks/{task_id}"
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 60)
    assert final.status is TaskStatus.COMPLETED


async def test_no_face_is_a_permanent_failure(stack: Stack, astronaut: Path) -> None:
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buffer, format="PNG")
    coffee = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = await stack.http.post(
        "/api/face-swap/process?wait=30",
        json={"source_url": coffee, "target_url": data_uri(astronaut, "image/png")},
    )
    body = response.json()
    assert body["status"] == "FAILED" and body["attempts"] == 1
    assert "no face" in body["error"]["message"].lower() and "source" in body["error"]["message"]


async def test_same_idempotency_key_gives_one_task(stack: Stack) -> None:
    body = {"workflow": "probe", "environment": "face_swap"}
    headers = {"Idempotency-Key": "order-42"}
    first = await stack.http.post("/api/tasks/create", json=body, headers=headers)
    second = await stack.http.post("/api/tasks/create", json=body, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    task_id = first.json()["taskId"]
    assert second.json()["taskId"] == task_id
    await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
    js = stack.nc.jetstream()
    info = await js.stream_info(TASK_STREAM, subjects_filter="pixelbus.tasks.*.*.created.>")
    assert sum((info.state.subjects or {}).values()) == 1


async def test_probe_goes_through_worker_and_uploader(stack: Stack) -> None:
    created = await stack.http.post(
        "/api/tasks/create", json={"workflow": "probe", "environment": "face_swap"}
    )
    task_id = created.json()["taskId"]
    state = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
    assert state.status is TaskStatus.COMPLETED
    [output] = state.outputs
    assert output.filename == "probe.json" and output.provider == "local"
    fetched = await stack.http.get(output.url.removeprefix(stack.base_url))
    assert fetched.json()["task_id"] == task_id


async def test_cancel_a_queued_task_then_cancel_again_is_409(stack: Stack) -> None:
    body = {
        "workflow": "txt2img",
        "environment": "comm",
        "params": {"input_data": {"wf_json": {"1": {}}}},
    }
    task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
    cancelled = await stack.http.post(f"/api/tasks/{task_id}/cancel")
    assert cancelled.status_code == 202
    state = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 10)
    assert state.status is TaskStatus.CANCELLED
    again = await stack.http.post(f"/api/tasks/{task_id}/cancel")
    assert again.status_code == 409
    assert (await stack.http.get("/api/tasks/nope")).status_code == 404
    # the queued message is skipped when its turn comes: nothing is leased
    assert (await stack.http.get("/api/comm/task/fetch?wait=0.5")).status_code == 204


async def test_body_over_the_limit_is_413(stack: Stack) -> None:
    huge = "data:image/png;base64," + "A" * (21 * 1024 * 1024)
    response = await stack.http.post("/api/tasks/create", json=face_swap_body(huge, huge))
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


async def test_health_reports_nats_kv_and_workers(stack: Stack) -> None:
    response = await stack.http.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["nats"]["connected"] and body["kv"]["ok"]
    assert body["pools"].get("faceswap") == 1
    # a worker that died 20 s ago (its last heartbeat): no longer counted, though its
    # presence entry lives on in the bucket until it expires
    workers = await stack.nc.jetstream().key_value(WORKERS_BUCKET)
    died = (utcnow() - timedelta(seconds=20)).isoformat()
    stale = {"worker": "gone", "pool": "faceswap", "at": died}
    await workers.put("faceswap.gone", json.dumps(stale).encode())
    again = (await stack.http.get("/api/health")).json()
    assert again["pools"].get("faceswap") == 1
    assert "gone" not in [w["worker"] for w in again["workers"]]
    docs = await stack.http.get("/openapi.json")
    paths = docs.json()["paths"]
    for path in (
        "/api/tasks/create",
        "/api/tasks/{task_id}",
        "/api/face-swap/process",
        "/api/comm/task/fetch",
        "/api/health",
        "/api/tasks/{task_id}/cancel",
    ):
        assert path in paths, path


async def test_face_swap_process_keeps_every_option(stack: Stack) -> None:
    body = {
        "source_url": "https://example.com/a.jpg",
        "target_url": "https://example.com/b.jpg",
        "output_format": "webp",
        "quality": 80,
        "target_face_index": 0,
    }
    response = await stack.http.post("/api/face-swap/process?wait=0", json=body)
    assert response.status_code == 202
    wf_json = response.json()["params"]["input_data"]["wf_json"]
    assert wf_json["output_format"] == "webp" and wf_json["quality"] == 80
    assert wf_json["target_face_index"] == 0
    bad = await stack.http.post("/api/face-swap/process?wait=0", json={**body, "quality": 0})
    assert bad.status_code == 422 and "quality" in bad.text


async def test_a_large_graph_is_left_out_of_the_state_and_shown_on_request(
    stack: Stack,
) -> None:
    graph = {
        str(n): {"class_type": "Note", "inputs": {"text": f"node {n} " * 8}} for n in range(300)
    }
    body = {"workflow": "big", "environment": "comm", "params": {"input_data": {"wf_json": graph}}}
    created = await stack.http.post("/api/tasks/create", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["taskId"]
    assert created.json()["params"]["input_omitted"]["bytes"] > 4096
    state = await wait_for_state(await stack.kv(), task_id, lambda s: True, 10)
    assert state.input_data is None  # the stored state stays small
    slim = (await stack.http.get(f"/api/tasks/{task_id}")).json()
    assert slim["params"]["input_data"] == {} and slim["params"]["input_omitted"]["sha256"]
    whole = (await stack.http.get(f"/api/tasks/{task_id}?include=input")).json()
    assert whole["params"] == {"input_data": {"wf_json": graph}}
    bad = await stack.http.get(f"/api/tasks/{task_id}?include=everything")
    assert bad.status_code == 422 and "include" in bad.text
