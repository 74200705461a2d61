"""The stack as an operator runs it: every service a process started from what we ship
(a virtualenv's console scripts, or a container image), never from the source tree.

``tests/test_packaging.py`` starts the services from wheels installed in a virtualenv,
``tests/test_images.py`` from container images; both then run the same two tasks through
them: a face swap of two real photographs (built-in engine) and a ComfyUI graph on the
fake ComfyUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nats.aio.client import Client
from PIL import Image

from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.waiting import wait_for_state
from tests.conftest import data_uri

#: service → its console script (one per service, as each package declares it)
ENTRY_POINTS = {
    "gateway": "pixelbus-gateway",
    "projector": "pixelbus-projector",
    "webhooks": "pixelbus-webhooks",
    "faceswap-worker": "pixelbus-faceswap-worker",
    "storage-uploader": "pixelbus-storage-uploader",
    "comfy-worker": "pixelbus-comfy-worker",
}


@dataclass
class Processes:
    """Services started as processes, each logging to its own file. ``launched``: each
    is started by a launcher (``buildah run``) that does not pass SIGTERM on, so the
    signal goes to the service's own process under it."""

    log_dir: Path
    launched: bool = False
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.running[name] = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def dead(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.running.items() if p.poll() is not None}

    def logs(self, lines: int = 25) -> str:
        """The last lines of every service's log, for a failure message."""
        parts = []
        for name in self.running:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(
                f"--- {name} (exit {self.running[name].poll()})\n" + "\n".join(text[-lines:])
            )
        return "\n".join(parts)

    def stop(self, timeout_s: float = 20) -> dict[str, int]:
        """SIGTERM to all, then wait (SIGKILL past ``timeout_s``); their exit codes."""
        for process in self.running.values():
            if process.poll() is None:
                for pid in service_pids(process.pid) if self.launched else [process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        codes = {}
        for name, process in self.running.items():
            try:
                codes[name] = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


def service_pids(launcher: int) -> list[int]:
    """The processes under ``launcher`` that are not the launcher's own (its helpers are
    named after it, as buildah's are)."""
    found, todo = [], [launcher]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
        if pid != launcher:
            with contextlib.suppress(OSError):
                if "buildah" not in Path(f"/proc/{pid}/comm").read_text():
                    found.append(pid)
    return found


@contextlib.contextmanager
def processes(log_dir: Path, *, launched: bool = False) -> Iterator[Processes]:
    running = Processes(log_dir, launched)
    try:
        yield running
    finally:
        running.stop()


def stack_settings(nats_url: str, storage_dir: str, port: int, comfyui_url: str) -> dict[str, str]:
    """The settings every service gets (as a ConfigMap would give them)."""
    return {
        "NATS_URL": nats_url,
        "APP_ENV": "test",
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": storage_dir,
        "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PIXELBUS_PORT": str(port),
        "PIXELBUS_HOST": "127.0.0.1",
        "COMFYUI_URL": comfyui_url,
        "PIXELBUS_COMFY_HEALTH_INTERVAL_S": "0.2",
        "PIXELBUS_LOG_LEVEL": "WARNING",
    }


async def wait_ready(probe_ports: dict[str, int], stack: Processes, timeout_s: float) -> None:
    """Every service answers ``/readyz`` 200 on its probe port (as Kubernetes asks it);
    fails at once, with the logs, when a service has died."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = dict(probe_ports)
    async with httpx.AsyncClient(timeout=2) as http:
        while waiting:
            dead = stack.dead()
            assert not dead, f"services exited while starting: {dead}\n{stack.logs()}"
            for name, port in list(waiting.items()):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        del waiting[name]
            assert loop.time() < deadline, f"not ready in {timeout_s} s: {waiting}\n{stack.logs()}"
            await asyncio.sleep(0.2)  # polling processes that are starting


def invert_graph() -> dict[str, Any]:
    """A model-free ComfyUI graph: a red 32x16 image, inverted (cyan), saved."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0xFF0000},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pkg"}},
    }


async def run_both_tasks(
    http: httpx.AsyncClient, nc: Client, astronaut: Path, grace_hopper: Path, stack: Processes
) -> dict[str, float]:
    """A face swap and a ComfyUI task through the running services; each checked by its
    output image, downloaded from the gateway. Returns each task's create→final seconds."""
    swap = {
        "workflow": "face_swap",
        "environment": "face_swap",
        "params": {
            "input_data": {
                "wf_json": {
                    "source_url": data_uri(astronaut, "image/png"),
                    "target_url": data_uri(grace_hopper, "image/jpeg"),
                    "resolution": "256x300",
                }
            }
        },
    }
    comfy = {
        "workflow": "invert_raw",
        "environment": "comm",
        "params": {"input_data": {"wf_json": invert_graph()}},
    }
    kv = await nc.jetstream().key_value(STATE_BUCKET)
    seconds: dict[str, float] = {}
    outputs: dict[str, bytes] = {}
    for name, body in (("face_swap", swap), ("comfy", comfy)):
        started = asyncio.get_running_loop().time()
        created = await http.post("/api/tasks/create", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["taskId"]
        try:
            state = await wait_for_state(kv, task_id, lambda s: s.is_final, 90)
        except TimeoutError:
            raise AssertionError(f"{name} task not final in 90 s\n{stack.logs()}") from None
        seconds[name] = asyncio.get_running_loop().time() - started
        assert state.status == TaskStatus.COMPLETED, (state.error, stack.logs())
        [output] = state.outputs
        image = await http.get(httpx.URL(output.url).path)
        assert image.status_code == 200, image.text
        outputs[name] = image.content
    assert_face_swapped(outputs["face_swap"], grace_hopper)
    with Image.open(io.BytesIO(outputs["comfy"])) as png:
        assert png.size == (32, 16) and png.convert("RGB").getpixel((5, 5)) == (0, 255, 255)
    return seconds


def assert_face_swapped(png: bytes, grace_hopper: Path) -> None:
    """The output is the target at 256x300 with a new face and the rest untouched."""
    result = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert result.shape == (300, 256, 3)
    target = np.asarray(Image.open(grace_hopper).convert("RGB").resize((256, 300))).astype(int)
    face_box = (slice(40, 170), slice(75, 185))  # Grace Hopper's face at 256x300
    inside = np.abs(result[face_box] - target[face_box]).mean()
    corner = np.abs(result[260:, :40] - target[260:, :40]).mean()
    assert inside > 8, f"no visible swap inside the face box (mean diff {inside:.1f})"
    assert corner < 4, f"the image changed far from the face (mean diff {corner:.1f})"
