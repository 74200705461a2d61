"""Remote agent mode: the comfy-worker outside the cluster, tasks over the gateway's
``/api/comm/task/*`` endpoints, no NATS of its own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from pixelbus.client import AsyncClient
from pixelbus.comfy_worker.agent import RemoteAgent
from pixelbus.comfy_worker.handler import ComfyHandler
from pixelbus.comfy_worker.service import build_pool
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import builtin_templates
from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.fake_comfyui import FakeComfyUI
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import wait_for_state
from tests.stack import Stack, running_stack
from tests.test_comfy_e2e import comm_task, invert_graph

pytestmark = pytest.mark.e2e


@pytest.fixture
async def gateway_only(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    """Gateway and uploader; no comfy-worker in the cluster."""
    async with running_stack(
        nats_server.url, tmp_path, worker=False, PIXELBUS_ACK_WAIT_S_COMFY="3"
    ) as stack:
        yield stack


def agent_env(stack: Stack, fake: FakeComfyUI) -> dict[str, str]:
    return {
        "COMFYUI_URL": fake.url,
        "PIXELBUS_COMFY_AGENT_URL": stack.base_url,
        "PIXELBUS_COMFY_AGENT_NAME": "gpu-box-7",
        "PIXELBUS_COMFY_AGENT_POLL_S": "1",
        "PIXELBUS_COMFY_AGENT_HEARTBEAT_S": "0.3",
        "PIXELBUS_COMFY_HEALTH_INTERVAL_S": "0.2",
        "NATS_URL": "nats://127.0.0.1:1",  # nothing listens there: the agent must not need it
        "PIXELBUS_LOG_LEVEL": "WARNING",
    }


def spawn_agent(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m pixelbus.comfy_worker`` in remote agent mode, as its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "pixelbus.comfy_worker"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


async def test_agent_process_completes_a_task_without_nats(
    gateway_only: Stack, fake_comfyui: FakeComfyUI
) -> None:
    stack = gateway_only
    fake_comfyui.steps["ImageInvert"] = 3
    fake_comfyui.delays["ImageInvert"] = 0.6
    task_id = (
        await stack.http.post("/api/tasks/create", json=comm_task(invert_graph(0x0000FF)))
    ).json()["taskId"]
    agent = spawn_agent(agent_env(stack, fake_comfyui))
    try:
        kv = await stack.kv()
        running = await wait_for_state(
            kv, task_id, lambda s: s.progress is not None and s.progress.node == "2", 20
        )
        assert running.worker == "external:gpu-box-7"
        final = await wait_for_state(kv, task_id, lambda s: s.is_final, 20)
    finally:
        agent.terminate()  # waited for in a thread: the fake ComfyUI lives on this loop
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(agent.wait, 10)
        if agent.poll() is None:
            agent.kill()
            await asyncio.to_thread(agent.wait)
    assert final.status == TaskStatus.COMPLETED, final.error
    [output] = final.outputs
    assert (
        output.provider == "local" and output.node_id == "3" and output.content_type == "image/png"
    )
    image = await stack.http.get(output.url.removeprefix(stack.base_url))
    with Image.open(io.BytesIO(image.content)) as png:
        assert png.convert("RGB").getpixel((0, 0)) == (255, 255, 0)
    assert final.result is not None and final.result["backend"] == fake_comfyui.url
    assert agent.returncode == 0


@contextlib.asynccontextmanager
async def agent_in_process(stack: Stack, fake: FakeComfyUI) -> AsyncIterator[RemoteAgent]:
    settings = ComfySettings.from_env(agent_env(stack, fake))
    assert settings.agent is not None
    pool = build_pool(settings)
    await pool.start()
    async with AsyncClient(stack.base_url, timeout=30) as client:
        handler = ComfyHandler(settings, pool, builtin_templates())
        agent = RemoteAgent(settings.agent, handler, pool, concurrency=1, client=client)
        running = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            agent.stop()
            await asyncio.wait_for(running, 30)
            await pool.close()


async def test_cancelling_a_leased_task_interrupts_its_prompt(
    gateway_only: Stack, fake_comfyui: FakeComfyUI
) -> None:
    stack = gateway_only
    async with agent_in_process(stack, fake_comfyui):
        fake_comfyui.delays["ImageInvert"] = 5.0
        fake_comfyui.steps["ImageInvert"] = 50
        task = comm_task(invert_graph(3))
        task_id = (await stack.http.post("/api/tasks/create", json=task)).json()["taskId"]
        await fake_comfyui.wait_until(lambda f: f._current_node == "2", timeout=20)
        prompt_id = fake_comfyui.running_prompt
        assert (await stack.http.post(f"/api/tasks/{task_id}/cancel")).status_code == 202
        final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 20)
        assert final.status == TaskStatus.CANCELLED
        call = await fake_comfyui.wait_for_call("POST", "/interrupt", timeout=10)
        assert call.body == {"prompt_id": prompt_id}


async def test_outputs_the_gateway_refuses_fail_the_task_saying_why(
    gateway_only: Stack, fake_comfyui: FakeComfyUI
) -> None:
    stack = gateway_only
    graph = invert_graph(5)
    graph["1"]["inputs"].update(width=2, height=2, batch_size=65)  # the gateway takes 64
    async with agent_in_process(stack, fake_comfyui):
        task_id = (await stack.http.post("/api/tasks/create", json=comm_task(graph))).json()[
            "taskId"
        ]
        final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 20)
    assert final.status == TaskStatus.FAILED and final.error is not None
    assert final.error.code == "outputs_refused" and "65 output(s)" in final.error.message
