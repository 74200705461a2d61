"""The comfy handler against the fake ComfyUI (real HTTP + WebSocket), without NATS:
outputs, inputs, errors, the protocol's races, cancellation and timeouts, backends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelbus.comfy_worker.backends import BackendPool
from pixelbus.comfy_worker.handler import ComfyHandler
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import builtin_templates
from pixelbus.contracts.events import TaskCreated
from pixelbus.runtime.errors import PixelbusError
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.worker import TaskContext, TaskResult
from pixelbus.testkit.fake_comfyui import FakeComfyUI


@contextlib.contextmanager
def raises(*, retryable: bool) -> Iterator[pytest.ExceptionInfo[PixelbusError]]:
    """The handler's failure: a domain error whose ``retryable`` decides the task's fate."""
    with pytest.raises(PixelbusError) as failed:
        yield failed
    assert failed.value.retryable is retryable


def invert_graph(color: int = 0xFF0000, **save: Any) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "t", **save},
        },
    }


def png_data_uri(color: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Run:
    handler: ComfyHandler
    pool: BackendPool
    progress: list[tuple[float | None, str | None, str | None]] = field(default_factory=list)
    #: when each progress report came, and when the last task started (monotonic)
    reported_at: list[float] = field(default_factory=list)
    started_at: float = 0.0

    def context(self, wf_json: Any, workflow: str = "raw", **input_data: Any) -> TaskContext:
        created = TaskCreated(
            event_id="e",
            task_id="task_1",
            occurred_at=datetime.now(UTC),
            workflow=workflow,
            environment="comm",
            input_data={"wf_json": wf_json, **input_data},
        )

        async def report(fraction: float | None, node: str | None, message: str | None) -> None:
            self.progress.append((fraction, node, message))
            self.reported_at.append(time.monotonic())

        return TaskContext(created, 1, report)

    async def __call__(self, wf_json: Any, workflow: str = "raw", **input_data: Any) -> TaskResult:
        self.started_at = time.monotonic()
        return await self.handler(self.context(wf_json, workflow, **input_data))


@pytest.fixture
async def run(fake_comfyui: FakeComfyUI) -> AsyncIterator[Run]:
    async with make_run([fake_comfyui.url]) as value:
        yield value


def make_settings(urls: list[str], **env: str) -> ComfySettings:
    return ComfySettings.from_env(
        {
            "COMFYUI_URL": ",".join(urls),
            "PIXELBUS_COMFY_HEALTH_INTERVAL_S": "0.1",
            "PIXELBUS_COMFY_RECONNECT_S": "1",
            "PIXELBUS_COMFY_POLL_INTERVAL_S": "1",
            **env,
        }
    )


class make_run:
    def __init__(self, urls: list[str], **env: str) -> None:
        self.settings = make_settings(urls, **env)
        self.pool = BackendPool(
            self.settings.urls, capacity=self.settings.backend_capacity, health_interval_s=0.1
        )

    async def __aenter__(self) -> Run:
        await self.pool.start()
        return Run(ComfyHandler(self.settings, self.pool, builtin_templates()), self.pool)

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()


def pixel(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").getpixel((0, 0))  # type: ignore[return-value]


async def test_model_free_graph_outputs_the_inverted_image_with_node_and_progress(
    fake_comfyui: FakeComfyUI,
) -> None:
    fake_comfyui.steps["ImageInvert"] = 4
    fake_comfyui.delays["ImageInvert"] = 0.04
    fake_comfyui.texts["ImageInvert"] = "inverting"  # binary frames do not disturb the run
    async with make_run([fake_comfyui.url], PIXELBUS_COMFY_PROGRESS_DELAY_S="0") as run:
        result = await run(invert_graph(0xFF0000))
    [output] = result.outputs
    assert output.node_id == "3" and output.content_type == "image/png"
    assert output.filename.endswith(".png")
    assert pixel(output.data) == (0, 255, 255)  # red, inverted
    assert result.result is not None and result.result["backend"] == fake_comfyui.url
    assert result.result["files"][0]["node_id"] == "3"
    fractions = [f for f, _, _ in run.progress if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(node == "2" and "step 2/4" in (message or "") for _, node, message in run.progress)
    [submitted] = fake_comfyui.calls_to("POST", "/prompt")
    assert submitted.body["client_id"] == run.pool.client_id


async def test_progress_waits_for_the_delay_and_a_quick_task_reports_none(
    fake_comfyui: FakeComfyUI,
) -> None:
    async with make_run([fake_comfyui.url], PIXELBUS_COMFY_PROGRESS_DELAY_S="5") as run:
        assert (await run(invert_graph(0x010203))).outputs
        assert run.progress == []  # done well within the delay: nothing to report
    fake_comfyui.steps["ImageInvert"] = 6
    fake_comfyui.delays["ImageInvert"] = 0.6
    async with make_run([fake_comfyui.url], PIXELBUS_COMFY_PROGRESS_DELAY_S="0.2") as run:
        assert (await run(invert_graph(0x040506))).outputs
        assert run.progress and run.reported_at[0] - run.started_at >= 0.2
        fractions = [f for f, _, _ in run.progress if f is not None]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        assert any(node == "2" and "step" in (message or "") for _, node, message in run.progress)


async def test_data_uri_input_is_uploaded_and_load_image_rewritten(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": png_data_uri((10, 200, 30))}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "up"}},
    }
    result = await run(graph)
    assert pixel(result.outputs[0].data) == (245, 55, 225)
    [prompt] = fake_comfyui.calls_to("POST", "/prompt")
    name = prompt.body["prompt"]["1"]["inputs"]["image"]
    assert name.startswith("pixelbus/") and name.endswith(".png")
    assert (fake_comfyui.root / "input" / name).is_file()
    await run(graph)  # the same image again: the same (deduplicated) name on the server
    assert (
        fake_comfyui.calls_to("POST", "/prompt")[1].body["prompt"]["1"]["inputs"]["image"] == name
    )


async def test_every_output_kind_is_kept_and_previews_only_when_asked(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 255},
        },
        "2": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "anim",
                "fps": 6.0,
                "lossless": True,
                "quality": 80,
                "method": "default",
            },
        },
        "3": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "4": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["3", 0], "filename_prefix": "latents/x"},
        },
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result = await run(graph)
    kinds = sorted((o.node_id, o.content_type) for o in result.outputs)
    assert kinds == [("2", "image/webp"), ("4", "application/octet-stream")]
    assert result.result is not None and result.result["skipped_previews"] == 3
    assert result.result["values"] == {"2": {"animated": [True]}}
    by_node = {o.node_id: o.data for o in result.outputs}
    webp = by_node["2"]
    assert (webp[:4], webp[8:12]) == (b"RIFF", b"WEBP")
    # the latent as SaveLatent writes it: safetensors, an 8-byte little-endian header
    # length, the JSON header, then the float32 tensor of EmptyLatentImage's shape
    latent = by_node["4"]
    (header_len,) = struct.unpack("<Q", latent[:8])
    header = json.loads(latent[8 : 8 + header_len])
    assert header == {
        "latent_tensor": {"dtype": "F32", "shape": [1, 4, 8, 8], "data_offsets": [0, 4 * 256]}
    }
    assert len(latent) == 8 + header_len + 4 * 256
    with_previews = await run(graph, include_previews=True)
    assert sorted(o.node_id for o in with_previews.outputs) == ["2", "4", "5", "5", "5"]


async def test_only_previews_fails_permanently_saying_why(run: Run) -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with raises(retryable=False) as failed:
        await run(graph)
    assert failed.value.code == "no_outputs" and "include_previews" in failed.value.message


async def test_graph_without_output_node_fails_permanently(run: Run) -> None:
    with raises(retryable=False) as failed:
        await run(
            {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1},
                }
            }
        )
    assert failed.value.code == "comfy_invalid_prompt"
    assert "Prompt has no outputs" in failed.value.message


async def test_invalid_graphs_fail_with_comfyuis_message_and_node(run: Run) -> None:
    unknown = invert_graph()
    unknown["2"]["class_type"] = "NoSuchNodeClass"
    with raises(retryable=False) as failed:
        await run(unknown)
    assert "Cannot execute because node NoSuchNodeClass does not exist" in failed.value.message
    assert "Node ID '#2'" in failed.value.message
    bad_value = invert_graph()
    bad_value["1"]["inputs"]["width"] = 0
    with raises(retryable=False) as failed:
        await run(bad_value)
    assert failed.value.code == "comfy_invalid_prompt"
    assert "node 1 (EmptyImage): Value 0 smaller than min of 1: width" in failed.value.message


async def test_partly_valid_graph_on_200_fails_and_is_withdrawn(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    graph = invert_graph()
    graph["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "broken"}}
    fake_comfyui.delays["ImageInvert"] = 0.3
    with raises(retryable=False) as failed:
        await run(graph)
    assert "node 4 (SaveImage): Required input is missing: images" in failed.value.message
    prompt_id = fake_comfyui.calls_to("POST", "/prompt")[0].body["prompt_id"]
    withdrawn = fake_comfyui.calls_to("POST", "/queue") + fake_comfyui.calls_to(
        "POST", "/interrupt"
    )
    assert withdrawn and all(prompt_id in str(c.body) for c in withdrawn)


async def test_execution_error_names_node_exception_and_message(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.failures["ImageInvert"] = "tensor on fire"
    with raises(retryable=False) as failed:
        await run(invert_graph())
    assert failed.value.code == "comfy_execution_error"
    assert failed.value.message == "node 2 (ImageInvert) raised Exception: tensor on fire"


async def test_history_race_is_survived(run: Run, fake_comfyui: FakeComfyUI) -> None:
    fake_comfyui.history_lag_s = 0.3  # execution_success long before the history is written
    result = await run(invert_graph(0x00FF00))
    assert pixel(result.outputs[0].data) == (255, 0, 255)


async def test_cached_rerun_still_returns_the_old_files(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    first = await run(invert_graph(0x123456))
    executed = len(fake_comfyui.executed_nodes)
    second = await run(invert_graph(0x123456))
    assert len(fake_comfyui.executed_nodes) == executed  # nothing ran again
    assert second.outputs[0].data == first.outputs[0].data
    assert second.outputs[0].filename == first.outputs[0].filename


async def test_socket_drop_mid_run_reconnects_and_reconciles(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.delays["ImageInvert"] = 0.5
    job = asyncio.create_task(run(invert_graph(0x0000FF)))
    await fake_comfyui.wait_until(lambda f: f.running_prompt is not None and f._current_node == "2")
    fake_comfyui.drop_sockets()
    result = await asyncio.wait_for(job, 10)
    assert pixel(result.outputs[0].data) == (255, 255, 0)
    assert run.pool.backends[0].stream.connections >= 2
    assert fake_comfyui.calls_to("GET", "/queue")  # it reconciled after reconnecting


async def test_restart_mid_run_loses_the_prompt_and_is_retryable(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.delays["ImageInvert"] = 0.5
    job = asyncio.create_task(run(invert_graph()))
    await fake_comfyui.wait_until(lambda f: f._current_node == "2")
    await fake_comfyui.crash()
    await fake_comfyui.start()  # back on the same port, queue and history gone
    with raises(retryable=True) as failed:
        await asyncio.wait_for(job, 10)
    assert failed.value.code == "comfy_prompt_lost"


async def test_server_down_is_retryable_and_marks_the_backend_down(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.crash_on["ImageInvert"] = True
    with raises(retryable=True) as failed:
        await asyncio.wait_for(run(invert_graph()), 10)
    assert failed.value.code == "comfy_unavailable"
    assert run.pool.free_slots() == 0 and not run.pool.any_healthy
    assert _backend_up(run.pool) == 0.0  # what the backend-down alerts read
    waiting = asyncio.create_task(run.pool.wait_free())
    await asyncio.sleep(0)
    assert not waiting.done()
    fake_comfyui.crash_on.clear()
    await fake_comfyui.start()
    assert await asyncio.wait_for(waiting, 10) == 2
    presence = run.pool.presence()
    assert presence["backends_healthy"] == 1 and presence["backends"][0]["healthy"] is True
    assert _backend_up(run.pool) == 1.0


def _backend_up(pool: BackendPool) -> float | None:
    """The worker's ``pixelbus_comfyui_backend_up`` gauge for the pool's one backend."""
    return process_metrics().registry.get_sample_value(
        "pixelbus_comfyui_backend_up", {"backend": pool.backends[0].url}
    )


async def test_cancel_while_queued_deletes_it_from_the_queue(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.delays["ImageInvert"] = 0.6
    first = asyncio.create_task(run(invert_graph(1)))
    await fake_comfyui.wait_until(lambda f: f.running_prompt is not None)
    second = asyncio.create_task(run(invert_graph(2)))
    await fake_comfyui.wait_until(lambda f: len(f.pending_prompts) == 1)
    queued = fake_comfyui.pending_prompts[0]
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert fake_comfyui.pending_prompts == []
    assert [c.body for c in fake_comfyui.calls_to("POST", "/queue")] == [{"delete": [queued]}]
    assert fake_comfyui.calls_to("POST", "/interrupt") == []
    assert (await first).outputs  # the other prompt was not touched


async def test_cancel_while_running_interrupts_exactly_that_prompt(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.delays["ImageInvert"] = 2.0
    fake_comfyui.steps["ImageInvert"] = 20
    job = asyncio.create_task(run(invert_graph(3)))
    await fake_comfyui.wait_until(lambda f: f._current_node == "2")
    running = fake_comfyui.running_prompt
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    [call] = fake_comfyui.calls_to("POST", "/interrupt")
    assert call.body == {"prompt_id": running}
    await fake_comfyui.wait_until(lambda f: f.history_of(running) is not None)
    history = fake_comfyui.history_of(running)
    assert history is not None and history["status"]["messages"][-1][0] == "execution_interrupted"


async def test_timeout_stops_the_prompt_and_fails_permanently(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    fake_comfyui.delays["ImageInvert"] = 3.0
    fake_comfyui.steps["ImageInvert"] = 30
    with raises(retryable=False) as failed:
        await run(invert_graph(4), timeout_s=0.5)
    assert failed.value.code == "comfy_timeout" and "0.5 s" in failed.value.message
    assert len(fake_comfyui.calls_to("POST", "/interrupt")) == 1


async def test_template_with_parameters_runs(run: Run) -> None:
    result = await run({"width": 20, "height": 10, "color": 0x0000FF}, workflow="blank")
    with Image.open(io.BytesIO(result.outputs[0].data)) as image:
        assert image.size == (20, 10) and image.convert("RGB").getpixel((0, 0)) == (255, 255, 0)
    assert result.result is not None and result.result["template"] == "blank"


async def test_node_type_outside_the_allowlist_never_reaches_comfyui(
    fake_comfyui: FakeComfyUI,
) -> None:
    async with make_run(
        [fake_comfyui.url], PIXELBUS_COMFY_ALLOWED_NODE_TYPES="EmptyImage,SaveImage"
    ) as run:
        with raises(retryable=False) as failed:
            await run(invert_graph())
        assert (
            failed.value.code == "node_type_not_allowed"
            and "ImageInvert (node 2)" in failed.value.message
        )
        assert (await run({}, workflow="blank")).outputs  # templates declare their own types
    assert (
        fake_comfyui.calls_to("POST", "/prompt")[0].body["prompt"]["1"]["class_type"]
        == "EmptyImage"
    )
    assert len(fake_comfyui.calls_to("POST", "/prompt")) == 1


async def test_load_image_of_a_server_file_and_private_urls_are_refused(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "../../etc/passwd"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with raises(retryable=False) as failed:
        await run(graph)
    assert failed.value.code == "input_file_not_allowed"
    graph["1"]["inputs"]["image"] = f"{fake_comfyui.url}/view?filename=x.png"
    with raises(retryable=False) as failed:
        await run(graph)
    assert failed.value.code == "ssrf_blocked"
    graph["1"]["inputs"]["image"] = (
        "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    )
    with raises(retryable=False) as failed:
        await run(graph)
    assert failed.value.code == "invalid_image"
    assert fake_comfyui.calls_to("POST", "/prompt") == []


async def test_tasks_are_routed_to_the_backend_with_room(tmp_path: Path) -> None:
    fakes = [FakeComfyUI(tmp_path / name) for name in ("a", "b")]
    for fake in fakes:
        fake.delays["ImageInvert"] = 0.3
        await fake.start()
    try:
        async with make_run([f.url for f in fakes], PIXELBUS_COMFY_BACKEND_CAPACITY="1") as run:
            results = await asyncio.gather(run(invert_graph(5)), run(invert_graph(6)))
            assert {r.result["backend"] for r in results if r.result} == {
                fakes[0].url,
                fakes[1].url,
            }
    finally:
        for fake in fakes:
            await fake.stop()


async def test_same_file_names_from_two_savers_stay_two_outputs(run: Run) -> None:
    graph = invert_graph()
    graph["3"]["inputs"]["filename_prefix"] = "a/same"
    graph["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "b/same"},
    }
    result = await run({"prompt": graph, "client_id": "ignored"})  # /prompt's body shape works too
    names = sorted(o.filename for o in result.outputs)
    assert names == ["same_00001_-2.png", "same_00001_.png"]
    assert {o.node_id for o in result.outputs} == {"3", "4"}
    assert {pixel(o.data) for o in result.outputs} == {(0, 255, 255), (255, 0, 0)}


async def test_no_backend_with_room_is_retryable_after_the_reconnect_wait(
    run: Run, fake_comfyui: FakeComfyUI
) -> None:
    await fake_comfyui.crash()
    await run.pool.check_all()
    with raises(retryable=True) as failed:
        await run(invert_graph())
    assert (
        failed.value.code == "comfy_unavailable"
        and "no ComfyUI backend with room" in failed.value.message
    )
