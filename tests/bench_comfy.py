"""``just bench-comfy``: the platform's added time per ComfyUI task.

Starts its own nats-server, the services of ``./dev up`` (``tools.devstack.SERVICES``) plus
the comfy-worker, and a fake ComfyUI, each as its own process. Then, alternately, the same
graph (EmptyImage → ImageInvert → SaveImage, a fresh colour each run so that nothing is
cached):

- **direct**: what a client of ComfyUI does by hand — ``POST /prompt`` with its client id,
  follow its WebSocket to ``executing {node: null}``, read ``/history`` and the image
  with ``/view``;
- **platform**: ``POST /api/tasks/create`` → the KV says ``COMPLETED`` → the image is read
  from storage (the gateway's ``/files``).

Prints the median (and p90) of each over ``--runs`` runs after ``--warmup`` runs of each,
and the added time per task = median(platform) - median(direct); then where each one's time
went: the direct run's steps, and the platform's phases from the ``occurred_at`` of the
task's events (read back from the stream after the runs, so outside the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js import JetStreamContext
from tools.devstack import SERVICES
from websockets.asyncio.client import ClientConnection, connect

from pixelbus.contracts.events import decode_event
from pixelbus.contracts.subjects import STATE_BUCKET, TASK_STREAM, task_subject
from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.bench import Completions, bench_env, percentile, wait_health

#: the direct run's steps, and the platform's phases (``occurred_at`` of its events)
DIRECT_STEPS = (
    ("submit", "POST /prompt answered"),
    ("run", "WebSocket: executing {node: null}"),
    ("history", "/history has the entry"),
    ("view", "/view read the image"),
)
PLATFORM_PHASES = (
    ("gateway", "POST /api/tasks/create -> TaskCreated"),
    ("queue", "TaskCreated -> TaskStarted (pulled)"),
    ("worker", "TaskStarted -> OutputsReady (ComfyUI run + outputs)"),
    ("uploader", "OutputsReady -> TaskCompleted"),
    ("projection", "TaskCompleted -> KV COMPLETED seen"),
    ("client", "read the file (its URL from the final state)"),
)
EVENT_KINDS = ("created", "started", "outputs", "completed")


@dataclass
class Timings:
    direct: list[float] = field(default_factory=list)
    platform: list[float] = field(default_factory=list)
    direct_steps: dict[str, list[float]] = field(default_factory=dict)
    #: per measured platform run: task id, wall clock at the POST, at COMPLETED seen, at the end
    platform_runs: list[tuple[str, float, float, float]] = field(default_factory=list)
    platform_phases: dict[str, list[float]] = field(default_factory=dict)


def graph(color: int, size: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "bench"},
        },
    }


async def direct_once(
    comfy: httpx.AsyncClient,
    ws: ClientConnection,
    client_id: str,
    color: int,
    size: int,
    steps: dict[str, float] | None = None,
) -> float:
    """One direct run; ``steps`` gets each step's duration (seconds) when given."""
    marks = [time.perf_counter()]
    started = marks[0]
    answer = (
        await comfy.post("/prompt", json={"prompt": graph(color, size), "client_id": client_id})
    ).json()
    marks.append(time.perf_counter())
    prompt_id = answer["prompt_id"]
    while True:
        frame = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(frame, bytes):
            continue
        message = json.loads(frame)
        data = message["data"]
        if (
            message["type"] == "executing"
            and data.get("node") is None
            and data.get("prompt_id") == prompt_id
        ):
            break
    marks.append(time.perf_counter())
    history: dict[str, Any] = {}
    while not history:  # the history race: written just before the final message, asked again
        history = (await comfy.get(f"/history/{prompt_id}")).json()
    marks.append(time.perf_counter())
    [image] = history[prompt_id]["outputs"]["3"]["images"]
    body = (await comfy.get("/view", params=image)).content
    assert body[:4] == b"\x89PNG"
    marks.append(time.perf_counter())
    if steps is not None:
        for (name, _), (begin, end) in zip(DIRECT_STEPS, pairwise(marks), strict=True):
            steps[name] = end - begin
    return marks[-1] - started


async def platform_once(
    api: httpx.AsyncClient,
    completions: Completions,
    color: int,
    size: int,
    run: list[tuple[str, float, float, float]] | None = None,
) -> float:
    """One run through pixelbus; ``run`` gets (task id, wall clock at the POST, at
    COMPLETED seen, at the end) when given."""
    wall = time.time()
    started = time.perf_counter()
    task_id = f"bench_{uuid.uuid4().hex}"
    waiter = completions.wait(task_id)
    body = {
        "taskId": task_id,
        "workflow": "bench",
        "environment": "comm",
        "params": {"input_data": {"wf_json": graph(color, size)}},
    }
    created = await api.post("/api/tasks/create", json=body)
    assert created.status_code == 201, created.text
    completed = await asyncio.wait_for(waiter, 30)
    # the final state as a follower is handed it (SSE, the SDK's wait), then the file
    task = completions.states[task_id]
    assert task.status == TaskStatus.COMPLETED, task
    [output] = task.outputs
    image = (await api.get(output.url)).content
    assert image[:4] == b"\x89PNG"
    ended = time.perf_counter()
    if run is not None:
        run.append((task_id, wall, wall + (completed - started), wall + (ended - started)))
    return ended - started


async def platform_phases(
    js: JetStreamContext, runs: list[tuple[str, float, float, float]]
) -> dict[str, list[float]]:
    """Each run's phases (seconds), from its events' ``occurred_at``."""
    phases: dict[str, list[float]] = {name: [] for name, _ in PLATFORM_PHASES}
    for task_id, posted, completed_seen, ended in runs:
        at = {}
        for kind in EVENT_KINDS:
            msg = await js.get_last_msg(TASK_STREAM, task_subject("comm", "bench", kind, task_id))
            at[kind] = decode_event(msg.data or b"").occurred_at.timestamp()
        marks = [posted, *(at[kind] for kind in EVENT_KINDS), completed_seen, ended]
        for (name, _), (begin, end) in zip(PLATFORM_PHASES, pairwise(marks), strict=True):
            phases[name].append(end - begin)
    return phases


async def bench(
    base: str, comfy_url: str, nats_url: str, runs: int, warmup: int, size: int
) -> Timings:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await js.key_value(STATE_BUCKET)
    completions = Completions()
    watcher = asyncio.create_task(completions.watch(kv))
    client_id = f"bench-{uuid.uuid4().hex}"
    ws_url = comfy_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    times = Timings(direct_steps={name: [] for name, _ in DIRECT_STEPS})
    try:
        async with (
            httpx.AsyncClient(base_url=comfy_url, timeout=30) as comfy,
            httpx.AsyncClient(base_url=base, timeout=30) as api,
            connect(ws_url, max_size=None) as ws,
        ):
            for i in range(warmup + runs):
                measured = i >= warmup
                steps: dict[str, float] = {}
                direct = await direct_once(comfy, ws, client_id, (2 * i) % 0xFFFFFF, size, steps)
                platform = await platform_once(
                    api,
                    completions,
                    (2 * i + 1) % 0xFFFFFF,
                    size,
                    times.platform_runs if measured else None,
                )
                if measured:
                    times.direct.append(direct)
                    times.platform.append(platform)
                    for name, seconds in steps.items():
                        times.direct_steps[name].append(seconds)
        times.platform_phases = await platform_phases(js, times.platform_runs)
    finally:
        watcher.cancel()
        await nc.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be at least 20")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        port, comfy_port = free_port(), free_port()
        comfy_url = f"http://127.0.0.1:{comfy_port}"
        env = {**bench_env(server.url, port, Path(tmp) / "storage"), "COMFYUI_URL": comfy_url}
        fake = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pixelbus.testkit.fake_comfyui",
                "--port",
                str(comfy_port),
                "--root",
                str(Path(tmp) / "comfyui"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        # the stack of ``./dev up``, whatever services it is made of, and the comfy-worker
        # (which devstack adds only when COMFYUI_URL is set)
        modules = {**SERVICES, "comfy-worker": "pixelbus.comfy_worker"}
        processes = {
            name: subprocess.Popen([sys.executable, "-m", module], env=env)
            for name, module in modules.items()
        }
        base = f"http://127.0.0.1:{port}"
        try:
            wait_health(base, processes["gateway"])
            times = asyncio.run(
                bench(base, comfy_url, server.url, args.runs, args.warmup, args.size)
            )
        finally:
            for process in [*processes.values(), fake]:
                process.send_signal(signal.SIGTERM)
            for process in [*processes.values(), fake]:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            server.stop()
    direct, platform = times.direct, times.platform
    med_d, med_p = statistics.median(direct), statistics.median(platform)
    print(
        f"ComfyUI graph EmptyImage({args.size}x{args.size}) -> ImageInvert -> SaveImage on the fake ComfyUI, {args.runs} runs each (after {args.warmup} warm-up), alternating"
    )
    print(
        f"  direct   (POST /prompt -> WS done -> /history -> /view):     median {med_d * 1000:7.2f} ms   p90 {percentile(direct, 0.9) * 1000:7.2f} ms"
    )
    print(
        f"  platform (POST /api/tasks/create -> KV COMPLETED -> file): median {med_p * 1000:7.2f} ms   p90 {percentile(platform, 0.9) * 1000:7.2f} ms"
    )
    print(
        f"  added per task by pixelbus: {(med_p - med_d) * 1000:.2f} ms (median of platform - median of direct)"
    )
    print("  where the time went (medians of each step; they need not add up to the total):")
    for name, what in DIRECT_STEPS:
        print(f"    direct   {name:<10} {what:<52} {_ms(times.direct_steps[name])}")
    for name, what in PLATFORM_PHASES:
        print(f"    platform {name:<10} {what:<52} {_ms(times.platform_phases[name])}")
    return 0


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
