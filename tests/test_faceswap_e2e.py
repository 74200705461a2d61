"""The inswapper pipeline end to end: HTTP → gateway → JetStream → face-swap worker (stand-in
ONNX models with the real signatures) → uploader → storage, on a real nats-server; and the
batch endpoint."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixelbus.contracts.subjects import OUTPUTS_BUCKET, TASK_STREAM, pool_for_environment
from pixelbus.faceswap_worker.engines.base import FaceBox
from pixelbus.faceswap_worker.engines.setup import build_catalog
from pixelbus.faceswap_worker.handler import FaceSwapHandler
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.faceswap_worker.testing.standins import install_standins, photos_found_by
from pixelbus.media.arrays import decode_image
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.worker import WorkerRuntime
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import wait_for_state
from tests.conftest import data_uri, package_file
from tests.stack import Stack, running_stack, shared_engine

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Models:
    directory: Path
    manifest: Path
    group_faces: list[FaceBox]  # t1.jpg's six faces, as the built-in detector finds them


def decoded(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26)


@pytest.fixture(scope="module")
def group_photo() -> Path:
    return package_file("insightface", "data", "images", "t1.jpg")


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, group_photo: Path, astronaut: Path, grace_hopper: Path
) -> Models:
    directory = tmp_path_factory.mktemp("models")
    engine = shared_engine()
    images = [decoded(p) for p in (group_photo, astronaut, grace_hopper)]
    manifest = install_standins(directory, photos_found_by(engine.find_faces, images))
    (directory / "inswapper_128.onnx").unlink()  # only the fp16 model is installed
    return Models(directory, manifest, [f.box for f in engine.find_faces(images[0])])


def worker_env(stack: Stack, models: Models, **extra: str) -> dict[str, str]:
    return {
        **stack.env,
        "PIXELBUS_MODELS_DIR": str(models.directory),
        "PIXELBUS_MODELS_MANIFEST": str(models.manifest),
        "PIXELBUS_ONNX_PROVIDERS": "cpu",
        **extra,
    }


async def start_worker(
    stack: Stack, env: dict[str, str]
) -> tuple[WorkerRuntime, asyncio.Task[Any]]:
    settings = FaceSwapSettings.from_env(env)
    catalog = await asyncio.to_thread(build_catalog, settings, shared_engine())
    js = stack.nc.jetstream()
    runtime = WorkerRuntime(
        nc=stack.nc,
        js=js,
        pool=pool_for_environment("face_swap"),
        handlers={
            "face_swap": FaceSwapHandler(catalog, settings, ObjectReader(js, OUTPUTS_BUCKET))
        },
        settings=settings.bus,
        concurrency=settings.concurrency,
        grace_s=2,
    )
    task = asyncio.create_task(runtime.run())
    await asyncio.wait_for(runtime.wait_ready(), 10)
    return runtime, task


@pytest.fixture
async def stack(nats_server: NatsServer, tmp_path: Path, models: Models) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tmp_path, worker=False) as running:
        runtime, task = await start_worker(running, worker_env(running, models))
        try:
            yield running
        finally:
            runtime.stop()
            await asyncio.wait_for(task, 10)


def face_swap_body(**wf: Any) -> dict[str, Any]:
    return {"workflow": "face_swap", "params": {"input_data": {"wf_json": wf}}}


async def run_task(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    created = await stack.http.post("/api/tasks/create", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["taskId"]
    await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 60)
    return (await stack.http.get(f"/api/tasks/{task_id}")).json()


async def download(stack: Stack, task: dict[str, Any]) -> tuple[Image.Image, str]:
    [output] = task["result"]["outputs"]
    response = await stack.http.get(output["url"].removeprefix(stack.base_url))
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)), output["content_type"]


def scaled(box: FaceBox, factor: float) -> FaceBox:
    return FaceBox(
        left=round(box.left * factor),
        top=round(box.top * factor),
        right=round(box.right * factor),
        bottom=round(box.bottom * factor),
    )


def change(before: np.ndarray, after: np.ndarray, box: FaceBox) -> float:
    region = (slice(box.top, box.bottom), slice(box.left, box.right))
    return float(np.abs(after[region].astype(int) - before[region]).mean())


async def test_every_face_of_the_six_face_photo_is_replaced_in_webp_at_the_resolution(
    stack: Stack, models: Models, group_photo: Path, astronaut: Path
) -> None:
    task = await run_task(
        stack,
        face_swap_body(
            source_url=data_uri(astronaut, "image/png"),
            target_url=data_uri(group_photo, "image/jpeg"),
            model="inswapper_128_fp16",
            resolution="640x640",
            output_format="webp",
            quality=95,
        ),
    )
    assert task["status"] == "COMPLETED", task["error"]
    assert task["result"]["model"] == "inswapper_128_fp16"
    image, content_type = await download(stack, task)
    assert content_type == "image/webp" and image.format == "WEBP"
    assert image.size == (640, 443)  # 1280x886 fitted within 640x640
    assert not image.getexif()
    result = np.asarray(image.convert("RGB"))
    target = np.asarray(Image.open(group_photo).convert("RGB").resize((640, 443), Image.LANCZOS))
    assert len(models.group_faces) == 6
    for box in models.group_faces:
        assert change(target, result, scaled(box, 0.5)) > 15
    background = (slice(0, 40), slice(300, 420))  # the wall above the lamp
    assert np.abs(result[background].astype(int) - target[background]).mean() < 4


async def test_one_face_by_index_in_jpeg(
    stack: Stack, models: Models, group_photo: Path, grace_hopper: Path
) -> None:
    task = await run_task(
        stack,
        face_swap_body(
            source_url=data_uri(grace_hopper, "image/jpeg"),
            target_url=data_uri(group_photo, "image/jpeg"),
            model="inswapper_128_fp16",
            target_face_index=4,
            output_format="jpeg",
            quality=90,
        ),
    )
    assert task["status"] == "COMPLETED", task["error"]
    image, content_type = await download(stack, task)
    assert content_type == "image/jpeg" and image.size == (1280, 886)
    result = np.asarray(image.convert("RGB"))
    target = decoded(group_photo)
    changed = [change(target, result, box) > 15 for box in models.group_faces]
    assert changed == [False, False, False, False, True, False]


async def test_out_of_range_index_and_missing_model_fail_permanently(
    stack: Stack, group_photo: Path, astronaut: Path
) -> None:
    images = {
        "source_url": data_uri(astronaut, "image/png"),
        "target_url": data_uri(group_photo, "image/jpeg"),
    }
    out_of_range = await run_task(
        stack, face_swap_body(**images, model="inswapper_128_fp16", target_face_index=6)
    )
    assert out_of_range["status"] == "FAILED"
    assert out_of_range["error"]["code"] == "face_index_out_of_range"
    assert "has 6 faces" in out_of_range["error"]["message"]
    assert out_of_range["attempts"] == 1 and not out_of_range["error"]["retryable"]
    missing = await run_task(stack, face_swap_body(**images, model="inswapper_128"))
    assert missing["status"] == "FAILED" and missing["attempts"] == 1
    assert missing["error"]["code"] == "model_not_installed"
    assert "pixelbus models pull inswapper_128" in missing["error"]["message"]


async def test_a_batch_creates_one_task_each_and_reports_them_together(
    stack: Stack, group_photo: Path, astronaut: Path, grace_hopper: Path
) -> None:
    body = {
        "defaults": {
            "target_url": data_uri(grace_hopper, "image/jpeg"),
            "model": "inswapper_128_fp16",
            "output_format": "jpeg",
        },
        "items": [
            {"source_url": data_uri(astronaut, "image/png")},
            {"source_url": data_uri(group_photo, "image/jpeg"), "source_face_index": 2},
            {"source_url": data_uri(astronaut, "image/png"), "target_face_index": 1},
        ],
    }
    created = await stack.http.post(
        "/api/face-swap/batch", json=body, headers={"Idempotency-Key": "batch-1"}
    )
    assert created.status_code == 201, created.text
    batch = created.json()
    assert batch["count"] == 3 and len({t["taskId"] for t in batch["tasks"]}) == 3
    again = await stack.http.post(
        "/api/face-swap/batch", json=body, headers={"Idempotency-Key": "batch-1"}
    )
    assert again.status_code == 200  # the same key: the same batch, no new tasks
    assert again.json()["batch_id"] == batch["batch_id"]
    assert [t["taskId"] for t in again.json()["tasks"]] == [t["taskId"] for t in batch["tasks"]]
    kv = await stack.kv()
    for task in batch["tasks"]:
        await wait_for_state(kv, task["taskId"], lambda s: s.is_final, 60)
    status = (await stack.http.get(batch["status_url"])).json()
    assert status["done"] is True
    assert status["counts"] == {"COMPLETED": 2, "FAILED": 1}
    assert [t["status"] for t in status["tasks"]] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert status["tasks"][2]["error"]["code"] == "face_index_out_of_range"
    assert status["tasks"][0]["result"]["outputs"][0]["content_type"] == "image/jpeg"


async def test_an_invalid_batch_item_is_422_and_nothing_is_published(
    stack: Stack, astronaut: Path
) -> None:
    info = await stack.nc.jetstream().stream_info(TASK_STREAM)
    body = {
        "defaults": {"target_url": data_uri(astronaut, "image/png")},
        "items": [
            {"source_url": data_uri(astronaut, "image/png")},
            {"source_url": data_uri(astronaut, "image/png"), "quality": 0},
            {"target_url": "ftp://example.com/x.jpg"},
        ],
    }
    answer = await stack.http.post("/api/face-swap/batch", json=body)
    assert answer.status_code == 422
    locs = [tuple(e["loc"]) for e in answer.json()["detail"]]
    assert ("body", "items", 1, "quality") in locs
    assert ("body", "items", 2, "source_url") in locs
    assert ("body", "items", 2, "target_url") in locs
    after = await stack.nc.jetstream().stream_info(TASK_STREAM)
    assert after.state.messages == info.state.messages
    missing = await stack.http.get("/api/face-swap/batch/batch_0123456789abcdef0123_2")
    assert missing.status_code == 404


@pytest.fixture
def remote_service() -> Iterator[str]:
    """A face-swap service that answers the target with its colours inverted."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            import json

            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            target = Image.open(io.BytesIO(base64.b64decode(body["target_image"])))
            inverted = Image.fromarray(255 - np.asarray(target.convert("RGB")))
            buffer = io.BytesIO()
            inverted.save(buffer, format="PNG")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(buffer.getvalue())))
            self.end_headers()
            self.wfile.write(buffer.getvalue())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_the_remote_engine_completes_a_task_through_the_stack(
    nats_server: NatsServer,
    tmp_path: Path,
    models: Models,
    remote_service: str,
    astronaut: Path,
    grace_hopper: Path,
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        env = worker_env(stack, models, FACE_SWAP_API_URL=remote_service, FACE_SWAP_TIMEOUT="5")
        runtime, task = await start_worker(stack, env)
        try:
            done = await run_task(
                stack,
                face_swap_body(
                    source_url=data_uri(astronaut, "image/png"),
                    target_url=data_uri(grace_hopper, "image/jpeg"),
                    model="remote",
                ),
            )
        finally:
            runtime.stop()
            await asyncio.wait_for(task, 10)
        assert done["status"] == "COMPLETED", done["error"]
        assert done["result"]["model"] == "remote"
        image, _ = await download(stack, done)
        expected = 255 - decoded(grace_hopper).astype(int)
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - expected).max() <= 1


async def test_the_enhancer_is_off_by_default_and_blends_in_when_asked(
    stack: Stack, astronaut: Path, grace_hopper: Path
) -> None:
    images = {
        "source_url": data_uri(astronaut, "image/png"),
        "target_url": data_uri(grace_hopper, "image/jpeg"),
        "model": "inswapper_128_fp16",
    }
    plain, enhanced = await asyncio.gather(
        run_task(stack, face_swap_body(**images)),
        run_task(stack, face_swap_body(**images, enhancer="gfpgan_1.4", enhancer_blend=1.0)),
    )
    assert plain["status"] == enhanced["status"] == "COMPLETED"
    a = np.asarray((await download(stack, plain))[0].convert("RGB")).astype(int)
    b = np.asarray((await download(stack, enhanced))[0].convert("RGB")).astype(int)
    face = (slice(60, 300), slice(150, 370))  # Grace Hopper's face at 512x600
    corner = (slice(-80, None), slice(0, 80))
    assert np.abs(a[face] - b[face]).mean() > 3
    assert np.array_equal(a[corner], b[corner])
