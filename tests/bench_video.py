"""``just bench-video``: one video's face swap fanned out across 1 and 2 workers, beside
the same engine in a single-process loop, in one run on this machine.

- **loop** (the baseline): one process decodes every frame, swaps it with the built-in
  engine, encodes the frames and joins them with the audio — what a desktop tool does;
- **platform, N workers**: its own nats-server and the ``./dev up`` services as processes
  (gateway, projector, uploader, N face-swap workers), the video sent as a ``data:`` URI to
  ``POST /api/tasks/create``, timed until the task's state says COMPLETED.

Prints frames/s of each, the speed-up of 2 workers over 1, and the platform's added time
(1 worker against the loop), in all and per chunk. Worker processes are told to use one
thread each for OpenCV and the codecs, the loop too, so that N workers use N cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit import videos
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.waiting import wait_for_state
from tests.bench import bench_env, wait_health

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}


def loop_seconds(source_png: bytes, target: bytes) -> float:
    """The single-process loop: decode, swap every frame (the same engine and the same
    frame-by-frame path as a chunk worker: source face prepared once, faces followed and
    steadied), encode, join with the audio."""
    import threading

    import cv2

    from pixelbus.faceswap_worker.engines.base import SwapOptions
    from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
    from pixelbus.faceswap_worker.video import swap_frames
    from pixelbus.media.arrays import decode_image
    from pixelbus.media.video import (
        VideoLimits,
        assemble,
        decode_frames,
        encode_segment,
        probe_video,
    )

    cv2.setNumThreads(1)
    engine = LandmarkEngine()
    limits = VideoLimits(
        max_bytes=1 << 34, max_duration_s=86400, max_frames=10**7, max_pixels=1 << 27
    )
    started = time.perf_counter()
    source = decode_image(source_png, max_bytes=1 << 30, max_pixels=1 << 27)
    info = probe_video(target, limits)
    frames = decode_frames(target, info.frame_pts[0], info.frame_pts[-1])
    swapped = swap_frames(frames, source, engine, SwapOptions(), threading.Event(), [0, 0])
    segment = encode_segment(swapped, info, "mp4")
    assemble([segment], target, info, "mp4")
    return time.perf_counter() - started


def platform_seconds(
    workdir: Path, workers: int, source_uri: str, target_uri: str, chunk_s: float
) -> float:
    server = NatsServer(workdir / f"nats-{workers}")
    server.start()
    port = free_port()
    env = bench_env(server.url, port, workdir / f"storage-{workers}") | ONE_THREAD
    env["PIXELBUS_VIDEO_CHUNK_S"] = str(chunk_s)
    env["PIXELBUS_MAX_BODY_BYTES"] = str(200 << 20)
    env["PIXELBUS_MAX_INPUT_IMAGE_BYTES"] = str(150 << 20)
    modules = ["pixelbus.gateway", "pixelbus.projector", "pixelbus.storage_uploader"]
    modules += ["pixelbus.faceswap_worker"] * workers
    processes = [
        subprocess.Popen([sys.executable, "-m", module], env=env, stdin=subprocess.DEVNULL)
        for module in modules
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_health(base, processes[0])
        return asyncio.run(_one_task(server.url, base, source_uri, target_uri, workers))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()


async def _one_task(
    nats_url: str, base: str, source_uri: str, target_uri: str, workers: int
) -> float:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(STATE_BUCKET)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await _workers_ready(http, workers)
            body = {
                "workflow": "face_swap",
                "params": {
                    "input_data": {"wf_json": {"source_url": source_uri, "target_url": target_uri}}
                },
            }
            started = time.perf_counter()
            answer = await http.post("/api/tasks/create", json=body)
            answer.raise_for_status()
            task_id = answer.json()["taskId"]
            final = await wait_for_state(kv, task_id, lambda s: s.is_final, 1800)
            seconds = time.perf_counter() - started
            if final.status is not TaskStatus.COMPLETED:
                raise RuntimeError(f"the task ended {final.status}: {final.error}")
            return seconds
    finally:
        await nc.close()


async def _workers_ready(http: httpx.AsyncClient, workers: int) -> None:
    """Until the gateway's health counts every face-swap worker (engines loaded)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pools = (await http.get("/api/health")).json().get("pools") or {}
        if pools.get("faceswap", 0) >= workers:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the workers did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test video")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the test video")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument(
        "--chunk-s", type=float, default=1.0, help="PIXELBUS_VIDEO_CHUNK_S (10 chunks by default)"
    )
    args = parser.parse_args()
    os.environ.update(ONE_THREAD)
    width, height = (int(side) for side in args.size.split("x"))
    photos = videos.photos()
    target = videos.pan_video(
        photos["hopper"], seconds=args.seconds, fps=args.fps, size=(width, height)
    )
    source_png = videos.png_bytes(photos["astronaut"])
    frames = round(args.seconds * args.fps)
    chunks = -(-frames // max(1, round(args.chunk_s * args.fps)))
    source_uri = videos.data_uri(source_png, "image/png")
    target_uri = videos.data_uri(target, "video/mp4")
    print(
        f"video: {frames} frames, {args.size}, {args.fps} fps, {len(target)} bytes; "
        f"{chunks} chunks of {args.chunk_s} s",
        flush=True,
    )
    loop = loop_seconds(source_png, target)
    with tempfile.TemporaryDirectory(prefix="pixelbus-bench-video-") as tmp:
        one = platform_seconds(Path(tmp), 1, source_uri, target_uri, args.chunk_s)
        two = platform_seconds(Path(tmp), 2, source_uri, target_uri, args.chunk_s)
    rows = [
        ("single-process loop", loop),
        ("platform, 1 worker", one),
        ("platform, 2 workers", two),
    ]
    print("\n| run | seconds | frames/s |\n| --- | --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {frames / seconds:.1f} |")
    overhead = one - loop
    print(f"\n2 workers / 1 worker: {one / two:.2f}x the frames/s")
    print(
        f"platform's added time (1 worker - loop): {overhead:.2f} s = {overhead / loop:.1%} "
        f"of the loop, {overhead / chunks * 1000:.0f} ms per chunk"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
