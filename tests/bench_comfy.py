"""``just bench-comfy``: the platform's added time per ComfyUI task.

Starts its own nats-server, the gateway (with projector), the comfy-worker and the storage
uploader, and a fake ComfyUI, each as its own process. Then, alternately, the same graph
(EmptyImage → ImageInvert → SaveImage, a fresh colour each run so that nothing is cached):

- **direct**: what a client of ComfyUI does by hand — ``POST /prompt`` with its client id,
  follow its WebSocket to ``executing {node: null}``, read ``/history`` and the image
  with ``/view``;
- **platform**: ``POST /api/tasks/create`` → the KV says ``COMPLETED`` → the image is read
  from storage (the gateway's ``/files``).

Prints the median (and p90) of each over ``--runs`` runs after ``--warmup`` runs of each,
and the added time per task = median(platform) - median(direct).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
from websockets.asyncio.client import ClientConnection, connect

from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.bench import Completions, percentile, wait_health


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
    comfy: httpx.AsyncClient, ws: ClientConnection, client_id: str, color: int, size: int
) -> float:
    started = time.perf_counter()
    answer = (
        await comfy.post("/prompt", json={"prompt": graph(color, size), "client_id": client_id})
    ).json()
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
    history: dict[str, Any] = {}
    while not history:  # the history race: written just before the final message, asked again
        history = (await comfy.get(f"/history/{prompt_id}")).json()
    [image] = history[prompt_id]["outputs"]["3"]["images"]
    body = (await comfy.get("/view", params=image)).content
    assert body[:4] == b"\x89PNG"
    return time.perf_counter() - started


async def platform_once(
    api: httpx.AsyncClient, completions: Completions, color: int, size: int
) -> float:
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
    await asyncio.wait_for(waiter, 30)
    task = (await api.get(f"/api/tasks/{task_id}")).json()
    assert task["status"] == "COMPLETED", task
    [output] = task["result"]["outputs"]
    image = (await api.get(output["url"])).content
    assert image[:4] == b"\x89PNG"
    return time.perf_counter() - started


async def bench(
    base: str, comfy_url: str, nats_url: str, runs: int, warmup: int, size: int
) -> dict[str, list[float]]:
    nc = await nats.connect(nats_url)
    kv = await nc.jetstream().key_value(STATE_BUCKET)
    completions = Completions()
    watcher = asyncio.create_task(completions.watch(kv))
    client_id = f"bench-{uuid.uuid4().hex}"
    ws_url = comfy_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    times: dict[str, list[float]] = {"direct": [], "platform": []}
    try:
        async with (
            httpx.AsyncClient(base_url=comfy_url, timeout=30) as comfy,
            httpx.AsyncClient(base_url=base, timeout=30) as api,
            connect(ws_url, max_size=None) as ws,
        ):
            for i in range(warmup + runs):
                direct = await direct_once(comfy, ws, client_id, (2 * i) % 0xFFFFFF, size)
                platform = await platform_once(api, completions, (2 * i + 1) % 0xFFFFFF, size)
                if i >= warmup:
                    times["direct"].append(direct)
                    times["platform"].append(platform)
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
        env = {
            **os.environ,
            "NATS_URL": server.url,
            "PIXELBUS_PORT": str(port),
            "STORAGE_PROVIDER": "local",
            "PIXELBUS_LOCAL_STORAGE_DIR": str(Path(tmp) / "storage"),
            "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "COMFYUI_URL": comfy_url,
            "PIXELBUS_LOG_LEVEL": "WARNING",
        }
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
        modules = ["pixelbus.gateway", "pixelbus.comfy_worker", "pixelbus.storage_uploader"]
        processes = [subprocess.Popen([sys.executable, "-m", m], env=env) for m in modules]
        base = f"http://127.0.0.1:{port}"
        try:
            wait_health(base, processes[0])
            times = asyncio.run(
                bench(base, comfy_url, server.url, args.runs, args.warmup, args.size)
            )
        finally:
            for process in [*processes, fake]:
                process.send_signal(signal.SIGTERM)
            for process in [*processes, fake]:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            server.stop()
    direct, platform = times["direct"], times["platform"]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
