"""End to end through the gateway: HTTP → JetStream → comfy-worker → fake ComfyUI →
Object Store → uploader → storage, on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelbus.comfy_worker.backends import BackendPool
from pixelbus.comfy_worker.service import build_pool, build_runtime
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import builtin_templates
from pixelbus.contracts.events import TaskFailed, TaskProgress
from pixelbus.contracts.subjects import OUTPUTS_BUCKET, TASK_STREAM
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.runtime.worker import WorkerRuntime
from pixelbus.testkit.fake_comfyui import FakeComfyUI
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import EventLog, eventually, wait_for_state
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


def invert_graph(color: int = 0xFF0000) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e"}},
    }


def comm_task(wf_json: Any, workflow: str = "invert_raw", **input_data: Any) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "environment": "comm",
        "params": {"input_data": {"wf_json": wf_json, **input_data}},
    }


@dataclass
class ComfyStack:
    stack: Stack
    fakes: list[FakeComfyUI]
    runtime: WorkerRuntime
    pool: BackendPool

    async def create(self, body: dict[str, Any]) -> str:
        response = await self.stack.http.post("/api/tasks/create", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["taskId"])

    async def final(self, task_id: str, timeout: float = 20) -> TaskState:
        return await wait_for_state(await self.stack.kv(), task_id, lambda s: s.is_final, timeout)

    async def view(self, task_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.stack.http.get(f"/api/tasks/{task_id}")).json()
        return body


@contextlib.asynccontextmanager
async def comfy_stack(
    nats_url: str, tmp: Path, backends: int = 1, **env: str
) -> AsyncIterator[ComfyStack]:
    fakes = [FakeComfyUI(tmp / f"comfyui-{i}") for i in range(backends)]
    for fake in fakes:
        await fake.start()
    settings_env = {
        "COMFYUI_URL": ",".join(f.url for f in fakes),
        "PIXELBUS_COMFY_HEALTH_INTERVAL_S": "0.1",
        "PIXELBUS_COMFY_RECONNECT_S": "0.5",
        "PIXELBUS_COMFY_POLL_INTERVAL_S": "1",
        **env,
    }
    try:
        async with running_stack(nats_url, tmp, worker=False, **settings_env) as stack:
            settings = ComfySettings.from_env(stack.env)
            pool = build_pool(settings)
            await pool.start()
            runtime = build_runtime(
                settings, stack.nc, pool, builtin_templates(), grace_s=2, presence_interval_s=0.1
            )
            task = asyncio.create_task(runtime.run())
            await asyncio.wait_for(runtime.wait_ready(), 10)
            try:
                yield ComfyStack(stack, fakes, runtime, pool)
            finally:
                runtime.stop()
                await asyncio.wait_for(task, 10)
                await pool.close()
    finally:
        for fake in fakes:
            await fake.stop()


@pytest.fixture
async def comfy(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ComfyStack]:
    async with comfy_stack(nats_server.url, tmp_path) as running:
        yield running


async def test_model_free_graph_completes_with_its_image_in_storage_and_progress(
    comfy: ComfyStack,
) -> None:
    # long enough for progress: none is reported in a task's first 0.25 s (a task done by
    # then publishes none), then it is coalesced to one event per 0.25 s
    comfy.fakes[0].steps["ImageInvert"] = 8
    comfy.fakes[0].delays["ImageInvert"] = 0.8
    events = await EventLog.open(comfy.stack.nc)
    task_id = await comfy.create(comm_task(invert_graph(0xFF0000)))
    state = await comfy.final(task_id)
    assert state.status == TaskStatus.COMPLETED, state.error
    [output] = state.outputs
    assert output.node_id == "3" and output.content_type == "image/png"
    image = await comfy.stack.http.get(output.url.removeprefix(comfy.stack.base_url))
    assert image.status_code == 200
    with Image.open(io.BytesIO(image.content)) as png:
        assert png.size == (32, 16) and png.convert("RGB").getpixel((5, 5)) == (0, 255, 255)
    progress = events.of(task_id, TaskProgress)
    fractions = [p.fraction for p in progress if p.fraction is not None]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(p.node == "2" and "ImageInvert" in (p.message or "") for p in progress)
    view = await comfy.view(task_id)
    assert view["result"]["outputs"][0]["node_id"] == "3"
    assert view["result"]["backend"] == comfy.fakes[0].url


async def test_invalid_graph_and_execution_error_fail_with_comfyuis_words(
    comfy: ComfyStack,
) -> None:
    bad = invert_graph()
    bad["2"]["class_type"] = "NoSuchNodeClass"
    invalid = await comfy.create(comm_task(bad))
    comfy.fakes[0].failures["ImageInvert"] = "CUDA out of memory"
    crashing = await comfy.create(comm_task(invert_graph(7)))
    state = await comfy.final(invalid)
    assert state.status == TaskStatus.FAILED and state.error is not None
    assert state.error.code == "comfy_invalid_prompt" and not state.error.retryable
    assert "Cannot execute because node NoSuchNodeClass does not exist" in state.error.message
    assert "Node ID '#2'" in state.error.message
    state = await comfy.final(crashing)
    assert state.status == TaskStatus.FAILED and state.error is not None
    assert state.error.message == "node 2 (ImageInvert) raised Exception: CUDA out of memory"
    assert state.attempts == 1  # permanent: not retried


async def test_backend_killed_mid_run_the_task_completes_on_another(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with comfy_stack(
        nats_server.url, tmp_path, backends=2, PIXELBUS_COMFY_BACKEND_CAPACITY="1"
    ) as comfy:
        doomed, spare = comfy.fakes
        doomed.crash_on["ImageInvert"] = True  # the first pick (both free) dies mid-run
        events = await EventLog.open(comfy.stack.nc)
        task_id = await comfy.create(comm_task(invert_graph(0x00FF00)))
        state = await comfy.final(task_id)
        assert state.status == TaskStatus.COMPLETED, state.error
        assert state.attempts == 2
        [retry] = events.of(task_id, TaskFailed)
        assert retry.retryable and not retry.final and retry.code == "comfy_unavailable"
        assert (await comfy.view(task_id))["result"]["backend"] == spare.url
        assert not doomed.running and doomed.calls_to("POST", "/prompt")
        health = await eventually(
            lambda: _backends_health(comfy, lambda b: not b[doomed.url]["healthy"])
        )
        assert health[doomed.url]["error"] and health[spare.url]["healthy"] is True


async def _backends_health(
    comfy: ComfyStack, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    body = (await comfy.stack.http.get("/api/health")).json()
    workers = [w for w in body["workers"] if w.get("pool") == "comfy"]
    if not workers:
        return None
    backends = {b["url"]: b for b in workers[0].get("backends", [])}
    return backends if backends and accept(backends) else None


async def test_cancel_queued_and_running_end_cancelled_with_the_right_comfyui_call(
    comfy: ComfyStack,
) -> None:
    fake = comfy.fakes[0]
    fake.delays["ImageInvert"] = 3.0
    fake.steps["ImageInvert"] = 30
    running = await comfy.create(comm_task(invert_graph(1)))
    await fake.wait_until(lambda f: f._current_node == "2")
    queued = await comfy.create(comm_task(invert_graph(2)))
    await fake.wait_until(lambda f: len(f.pending_prompts) == 1)
    queued_prompt, running_prompt = fake.pending_prompts[0], fake.running_prompt
    assert (await comfy.stack.http.post(f"/api/tasks/{queued}/cancel")).status_code == 202
    assert (await comfy.final(queued)).status == TaskStatus.CANCELLED
    assert [c.body for c in fake.calls_to("POST", "/queue")] == [{"delete": [queued_prompt]}]
    assert fake.calls_to("POST", "/interrupt") == []
    assert (await comfy.stack.http.post(f"/api/tasks/{running}/cancel")).status_code == 202
    assert (await comfy.final(running)).status == TaskStatus.CANCELLED
    assert [c.body for c in fake.calls_to("POST", "/interrupt")] == [{"prompt_id": running_prompt}]
    await fake.wait_until(lambda f: f.history_of(running_prompt) is not None)
    assert fake.history_of(running_prompt)["status"]["messages"][-1][0] == "execution_interrupted"


async def test_template_runs_and_a_raw_graph_outside_the_allowlist_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with comfy_stack(
        nats_server.url, tmp_path, PIXELBUS_COMFY_ALLOWED_NODE_TYPES="EmptyImage,SaveImage"
    ) as comfy:
        template = await comfy.create(
            comm_task({"width": 40, "height": 20, "color": 0x000080}, workflow="blank")
        )
        raw = await comfy.create(comm_task(invert_graph()))
        state = await comfy.final(template)
        assert state.status == TaskStatus.COMPLETED, state.error
        image = await comfy.stack.http.get(state.outputs[0].url.removeprefix(comfy.stack.base_url))
        with Image.open(io.BytesIO(image.content)) as png:
            assert png.size == (40, 20) and png.convert("RGB").getpixel((0, 0)) == (255, 255, 127)
        refused = await comfy.final(raw)
        assert refused.status == TaskStatus.FAILED and refused.error is not None
        assert refused.error.code == "node_type_not_allowed"
        assert "ImageInvert (node 2)" in refused.error.message
        prompts = comfy.fakes[0].calls_to("POST", "/prompt")
        assert len(prompts) == 1 and prompts[0].body["prompt"]["1"]["inputs"]["width"] == 40


async def test_no_healthy_backend_leaves_tasks_queued_then_they_run(comfy: ComfyStack) -> None:
    fake = comfy.fakes[0]
    await fake.crash()
    await eventually(lambda: _none_if(comfy.pool.any_healthy), timeout=5)
    # the pull loop is parked at the gate: no pull request is open any more
    await eventually(lambda: _none_if(comfy.pool.parked == 0), timeout=5)
    task_id = await comfy.create(comm_task(invert_graph(9)))
    health = await eventually(lambda: _backends_health(comfy, lambda b: not b[fake.url]["healthy"]))
    assert health[fake.url]["error"]
    assert (await comfy.view(task_id))["status"] == "PENDING"
    info = await comfy.stack.nc.jetstream().consumer_info(TASK_STREAM, comfy.runtime.pool.durable)
    assert (info.num_pending, info.num_ack_pending) == (1, 0)  # not pulled: still in JetStream
    await fake.start()
    state = await comfy.final(task_id)
    assert state.status == TaskStatus.COMPLETED and state.attempts == 1


async def _none_if(flag: bool) -> bool | None:
    return None if flag else True


async def test_many_tasks_spread_over_two_backends_each_run_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with comfy_stack(
        nats_server.url, tmp_path, backends=2, PIXELBUS_COMFY_BACKEND_CAPACITY="2"
    ) as comfy:
        for fake in comfy.fakes:
            fake.delays["ImageInvert"] = 0.1
        task_ids = [await comfy.create(comm_task(invert_graph(100 + i))) for i in range(8)]
        states = await asyncio.gather(*(comfy.final(t, timeout=30) for t in task_ids))
        assert [s.status for s in states] == [TaskStatus.COMPLETED] * 8
        assert all(s.attempts == 1 and len(s.outputs) == 1 for s in states)
        runs = [len(f.calls_to("POST", "/prompt")) for f in comfy.fakes]
        assert sum(runs) == 8 and min(runs) >= 1, runs  # every task once, both backends used


async def test_a_graph_cannot_read_another_tasks_stored_images(comfy: ComfyStack) -> None:
    objects = await comfy.stack.nc.jetstream().object_store(OUTPUTS_BUCKET)
    await objects.put("inputs/task_someone_else/source_url", b"\\x89PNG private")
    graph = invert_graph()
    graph["1"] = {
        "class_type": "LoadImage",
        "inputs": {"image": "pixelbus-object:inputs/task_someone_else/source_url"},
    }
    task_id = await comfy.create(comm_task(graph))
    state = await comfy.final(task_id)
    assert state.status == TaskStatus.FAILED and state.error is not None
    assert state.error.code == "input_not_allowed"
    assert comfy.fakes[0].calls_to("POST", "/upload/image") == []


async def test_an_image_stored_for_this_task_is_uploaded_to_comfyui(comfy: ComfyStack) -> None:
    task_id = "task_with_stored_input"
    objects = await comfy.stack.nc.jetstream().object_store(OUTPUTS_BUCKET)
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (0, 0, 0)).save(buffer, format="PNG")
    await objects.put(f"inputs/{task_id}/image", buffer.getvalue())  # as the gateway stores them
    graph = invert_graph()
    graph["1"] = {
        "class_type": "LoadImage",
        "inputs": {"image": f"pixelbus-object:inputs/{task_id}/image"},
    }
    await comfy.create({"taskId": task_id, **comm_task(graph)})
    state = await comfy.final(task_id)
    assert state.status == TaskStatus.COMPLETED, state.error
    image = await comfy.stack.http.get(state.outputs[0].url.removeprefix(comfy.stack.base_url))
    with Image.open(io.BytesIO(image.content)) as png:
        assert png.size == (6, 4) and png.convert("RGB").getpixel((0, 0)) == (255, 255, 255)


async def test_a_large_inline_image_in_a_graph_goes_through_the_object_store(
    comfy: ComfyStack,
) -> None:
    """A data: URI bigger than a JetStream message is stored apart, not refused."""
    import base64
    import os

    buffer = io.BytesIO()
    noise = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))  # ~1.4 MB as PNG
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1024 * 1024
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    graph = invert_graph()
    graph["1"] = {"class_type": "LoadImage", "inputs": {"image": uri}}
    task_id = await comfy.create(comm_task(graph))
    view = await comfy.view(task_id)
    stored = view["params"]["input_data"]["wf_json"]["1"]["inputs"]["image"]
    assert stored.startswith(f"pixelbus-object:inputs/{task_id}/")  # a name of this request
    assert stored.endswith("-wf_json_1_inputs_image")
    state = await comfy.final(task_id)
    assert state.status == TaskStatus.COMPLETED, state.error
    image = await comfy.stack.http.get(state.outputs[0].url.removeprefix(comfy.stack.base_url))
    with Image.open(io.BytesIO(image.content)) as png:
        assert png.size == (700, 700)
        assert png.convert("RGB").getpixel((0, 0)) == tuple(255 - c for c in noise.getpixel((0, 0)))


async def test_a_truncated_input_image_fails_before_it_reaches_comfyui(comfy: ComfyStack) -> None:
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="PNG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    graph = invert_graph()
    graph["1"] = {
        "class_type": "LoadImage",
        "inputs": {"image": "data:image/png;base64," + base64.b64encode(truncated).decode()},
    }
    state = await comfy.final(await comfy.create(comm_task(graph)))
    assert state.status == TaskStatus.FAILED and state.error is not None
    assert state.attempts == 1  # permanent: the same bytes would fail again
    assert any(word in state.error.message for word in ("truncated", "corrupt")), state.error
    assert comfy.fakes[0].calls_to("POST", "/upload/image") == []
