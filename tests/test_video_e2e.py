"""Video face swap through the real services: the gateway, real face-swap worker
processes (splitter, chunk workers, assembler), the projector and the uploader, on a real
nats-server; test videos made here from the shipped photographs.

Frames are checked by content: each output frame is matched to the input frame whose
background it shows (a pan moves the picture by a few pixels a frame), so a frame lost,
doubled or out of order would show as a wrong match.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.js.errors import NotFoundError, ObjectNotFoundError

from pixelbus.contracts.subjects import OUTPUTS_BUCKET
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.contracts.video import VIDEO_CHUNKS_CONSUMER, VIDEO_STREAM, job_object
from pixelbus.media.arrays import RGBImage
from pixelbus.media.video import VideoInfo, VideoLimits, decode_frames, probe_video
from pixelbus.runtime.objects import ObjectReader
from pixelbus.testkit import videos
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack, running_stack, spawn_worker

pytestmark = [pytest.mark.e2e]

LIMITS = VideoLimits(max_bytes=1 << 30, max_duration_s=3600, max_frames=10**6, max_pixels=1 << 26)
#: 0.4 s chunks of a 25 fps video: 10 frames each
CHUNKED = {"PIXELBUS_VIDEO_CHUNK_S": "0.4", "PIXELBUS_LOG_LEVEL": "WARNING"}


def face_swap(target: bytes, **options: Any) -> dict[str, Any]:
    return videos.face_swap_body(videos.data_uri(target, "video/mp4"), **options)


def all_frames(data: bytes) -> list[tuple[int, RGBImage]]:
    info = probe_video(data, LIMITS)
    return list(decode_frames(data, info.frame_pts[0], info.frame_pts[-1]))


@pytest.fixture
async def stack(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tmp_path, worker=False, **CHUNKED) as stack:
        yield stack


class Workers:
    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int, **env: str) -> None:
        self.processes.extend(spawn_worker({**self._env, **env}) for _ in range(count))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def workers(stack: Stack) -> Iterator[Workers]:
    running = Workers(stack.env)
    try:
        yield running
    finally:
        running.stop()


async def create(stack: Stack, body: dict[str, Any]) -> str:
    answer = await stack.http.post("/api/tasks/create", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["taskId"])


def output_bytes(stack: Stack, state: TaskState) -> bytes:
    (output,) = state.outputs
    return (stack.storage_dir / output.key).read_bytes()


def assert_same_frames_swapped(original: bytes, result: bytes) -> None:
    """Every output frame is the input frame of the same timestamp (matched by its
    background, never a neighbour), with the face region changed."""
    before, after = all_frames(original), all_frames(result)
    assert [pts for pts, _ in after] == [pts for pts, _ in before]
    stack = np.stack([frame.astype(np.int16) for _, frame in before])
    changed = 0
    for index, (_, frame) in enumerate(after):
        frame16 = frame.astype(np.int16)
        # the picture's border (outside any face) says which input frame this is
        border = np.abs(stack[:, :12] - frame16[None, :12]).mean(axis=(1, 2, 3))
        # its own input frame is the nearest (neighbours may be as near: a slow pan moves
        # less than a pixel a frame)
        assert border[index] <= border.min() + 0.5, f"frame {index} is input {border.argmin()}"
        assert border[index] < 6, f"frame {index}: background moved by {border[index]:.1f}"
        if np.abs(frame16 - stack[index]).mean() > 1.0:
            changed += 1
    assert changed >= len(after) * 0.8, f"only {changed} of {len(after)} frames were swapped"


async def test_a_video_is_swapped_by_two_workers_with_progress_frames_and_audio_kept(
    stack: Stack, workers: Workers
) -> None:
    photos = videos.photos()
    target = videos.pan_video(photos["hopper"], seconds=2.0, fps=25, size=(256, 256))
    info: VideoInfo = probe_video(target, LIMITS)
    workers.start(2)
    task_id = await create(stack, face_swap(target))
    kv = await stack.kv()
    seen = await wait_for_state(
        kv,
        task_id,
        lambda s: s.progress is not None and (s.progress.frames_done or 0) > 0,
        120,
    )
    assert seen.progress is not None and seen.progress.frames_total == info.frames
    final = await wait_for_state(kv, task_id, lambda s: s.is_final, 180)
    assert final.status is TaskStatus.COMPLETED, final.error
    assert final.result is not None
    assert final.result["frames"] == info.frames and final.result["chunks"] == 5
    assert final.result["workers"] == 2  # both workers swapped chunks of the one video
    assert final.outputs[0].content_type == "video/mp4"
    result = output_bytes(stack, final)
    out = probe_video(result, LIMITS)
    assert (out.width, out.height, out.average_rate) == (info.width, info.height, info.average_rate)
    assert out.audio_codec == info.audio_codec
    assert abs(out.duration_s - info.duration_s) < 0.1
    assert_same_frames_swapped(target, result)


async def test_progress_moves_frame_by_frame_within_a_chunk(stack: Stack, workers: Workers) -> None:
    """One chunk holds the whole video: the progress seen before it is done can only come
    from the frames swapped so far."""
    photos = videos.photos()
    target = videos.pan_video(photos["hopper"], seconds=2.0, fps=25, size=(256, 256))
    frames = probe_video(target, LIMITS).frames
    workers.start(1, PIXELBUS_VIDEO_CHUNK_S="60", PIXELBUS_VIDEO_PROGRESS_INTERVAL_S="0.05")
    task_id = await create(stack, face_swap(target))
    kv = await stack.kv()

    def partial(state: TaskState) -> bool:
        done = 0 if state.progress is None else state.progress.frames_done or 0
        return state.is_final or 0 < done < frames

    seen = await wait_for_state(kv, task_id, partial, 120)
    assert not seen.is_final, "the task ended before any progress within its one chunk"
    assert seen.progress is not None and seen.progress.frames_total == frames
    assert seen.progress.message == f"{seen.progress.frames_done} of {frames} frames swapped"
    final = await wait_for_state(kv, task_id, lambda s: s.is_final, 120)
    assert final.status is TaskStatus.COMPLETED, final.error
    assert final.result is not None and final.result["chunks"] == 1
    assert final.progress is not None and final.progress.frames_done == frames


async def test_a_worker_killed_mid_chunk_costs_only_that_chunk(
    stack: Stack, workers: Workers
) -> None:
    photos = videos.photos()
    target = videos.pan_video(photos["hopper"], seconds=4.0, fps=25, size=(320, 256))
    workers.start(2)
    task_id = await create(stack, face_swap(target))
    js = stack.nc.jetstream()

    async def both_busy() -> bool | None:
        try:
            info = await js.consumer_info(VIDEO_STREAM, VIDEO_CHUNKS_CONSUMER)
        except NotFoundError:  # no worker has provisioned it yet
            return None
        return True if info.num_ack_pending >= 2 else None

    await eventually(both_busy, timeout=120)  # each worker holds a chunk (one at a time)
    doomed = workers.processes[0]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 180)
    assert final.status is TaskStatus.COMPLETED, final.error
    assert final.result is not None
    chunks = final.result["chunks"]
    info = await js.consumer_info(VIDEO_STREAM, VIDEO_CHUNKS_CONSUMER)
    assert info.delivered.consumer_seq == chunks + 1  # the killed worker's chunk, redone once
    assert_same_frames_swapped(target, output_bytes(stack, final))


async def test_cancel_stops_every_chunk(stack: Stack, workers: Workers) -> None:
    photos = videos.photos()
    target = videos.pan_video(photos["hopper"], seconds=4.0, fps=25, size=(256, 256))
    workers.start(1)
    task_id = await create(stack, face_swap(target))
    kv = await stack.kv()
    await wait_for_state(
        kv, task_id, lambda s: s.progress is not None and (s.progress.frames_done or 0) > 0, 120
    )
    answer = await stack.http.post(f"/api/tasks/{task_id}/cancel")
    assert answer.status_code in (200, 202), answer.text
    final = await wait_for_state(kv, task_id, lambda s: s.is_final, 60)
    assert final.status is TaskStatus.CANCELLED
    assert final.progress is not None and (final.progress.frames_done or 0) < 100
    await eventually(lambda: working_files_gone(stack, task_id), timeout=30)


async def working_files_gone(stack: Stack, task_id: str) -> bool | None:
    """True once the video task's source and target copies are out of the Object Store."""
    reader = ObjectReader(stack.nc.jetstream(), OUTPUTS_BUCKET)
    for name in (job_object(task_id, "source"), job_object(task_id, "target")):
        try:
            await reader.info(name)
            return None
        except ObjectNotFoundError:
            continue
    return True


@pytest.mark.parametrize(
    ("make", "extra", "code", "words"),
    [
        ("truncated", {}, "invalid_video", "truncated"),
        ("too_long", {}, "video_too_large", "PIXELBUS_VIDEO_MAX_DURATION_S"),
        ("no_faces", {}, "no_face_found", "any of the target video"),
        ("image_format", {"output_format": "png"}, "invalid_input", "mp4 or webm"),
    ],
)
async def test_bad_videos_fail_clearly(
    stack: Stack, workers: Workers, make: str, extra: dict[str, Any], code: str, words: str
) -> None:
    photos = videos.photos()
    good = videos.pan_video(photos["hopper"], seconds=1.0, fps=25, size=(128, 128), audio_hz=None)
    target = {
        "truncated": good[: len(good) // 2],
        "too_long": videos.pan_video(
            photos["hopper"], seconds=3.0, fps=10, size=(128, 128), audio_hz=None
        ),
        "no_faces": videos.pan_video(
            videos.photos()["coffee"], seconds=0.8, fps=25, size=(128, 128), audio_hz=None
        ),
        "image_format": good,
    }[make]
    workers.start(1, PIXELBUS_VIDEO_MAX_DURATION_S="2")
    task_id = await create(stack, face_swap(target, **extra))
    final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 120)
    assert final.status is TaskStatus.FAILED
    assert final.error is not None and final.error.code == code, final.error
    assert words in final.error.message
    if make == "no_faces":  # split, swapped, then failed: its working files are removed
        await eventually(lambda: working_files_gone(stack, task_id), timeout=30)
