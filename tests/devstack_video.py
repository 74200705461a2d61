"""``just check-up-video``: a video face swap through ``./dev up`` itself, as a user runs it.

Starts ``tools/devstack.py`` (the whole stack: its own nats-server, every service, local
storage, the built-in engine) on a free port with a temporary ``PIXELBUS_DEV_DIR``, POSTs a
pan video of one real face (by default 10 s of 1280x720 at 25 fps with an audio tone) as a
data URI, follows the task through ``GET /api/tasks/{id}`` until it ends, checks the result
against the input (frames, frame rate, size, audio, duration) and plays it to its end in
Chromium (a ``<video>`` element reaching ``ended``). Prints what it saw; exits 1 when a
check fails. ``tests/test_devstack_video.py`` runs it on a short, small clip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tools.devstack import wait_http

from pixelbus.media.video import VideoInfo, VideoLimits, probe_video
from pixelbus.testkit import videos
from pixelbus.testkit.nats_server import free_port

ROOT = Path(__file__).resolve().parent.parent
LIMITS = VideoLimits(max_bytes=1 << 31, max_duration_s=3600, max_frames=10**6, max_pixels=1 << 26)
_FINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class CheckFailed(Exception):
    """What the check found wrong, in one line."""


@dataclass
class Report:
    """What one run saw."""

    startup_s: float = 0.0
    task_s: float = 0.0
    #: ``frames_done`` of every distinct progress the task showed, in order
    progress: list[int] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    output_bytes: int = 0
    played: dict[str, Any] = field(default_factory=dict)


async def check(
    workdir: Path,
    *,
    seconds: float = 10.0,
    size: tuple[int, int] = (1280, 720),
    fps: int = 25,
    browser: bool = True,
    env: dict[str, str] | None = None,
    say: Callable[[str], object] = print,
) -> Report:
    """One video task through a fresh ``./dev up``; raises ``CheckFailed``."""
    target = videos.pan_video(videos.photos()["hopper"], seconds=seconds, fps=fps, size=size)
    wanted = probe_video(target, LIMITS)
    say(
        f"video: {wanted.frames} frames, {wanted.width}x{wanted.height}, "
        f"{float(wanted.average_rate):g} fps, {wanted.audio_codec} audio, {len(target):,} bytes"
    )
    report = Report()
    port = free_port()
    log_path = workdir / "devstack.log"
    process = start_stack(port, workdir / "stack", log_path, env or {})
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            began = time.monotonic()
            # the launcher's own wait: the gateway answers /api/health (or exits)
            if not await asyncio.to_thread(wait_http, f"{base}/api/health", 120, process):
                raise CheckFailed(f"./dev up did not come up: {_tail(log_path)}")
            report.startup_s = time.monotonic() - began
            say(f"./dev up: answering at {base}/api after {report.startup_s:.1f} s")
            began = time.monotonic()
            body = videos.face_swap_body(videos.data_uri(target, "video/mp4"))
            answer = await http.post("/api/tasks/create", json=body)
            if answer.status_code != 201:
                raise CheckFailed(f"create answered {answer.status_code}: {answer.text[:300]}")
            task_id = answer.json()["taskId"]
            task = await _follow(http, task_id, report, timeout_s=120 + 30 * seconds)
            report.task_s = time.monotonic() - began
            say(
                f"task {task_id}: {task['status']} in {report.task_s:.1f} s; progress seen "
                f"(frames_done, {len(report.progress)} values): {_brief(report.progress)}"
            )
            if task["status"] != "COMPLETED":
                raise CheckFailed(f"the task ended {task['status']}: {task.get('error')}")
            report.result = task["result"]
            (output,) = report.result["outputs"]
            data = (await http.get(output["url"].removeprefix(base))).content
            report.output_bytes = len(data)
            got = probe_video(data, LIMITS)
            say(
                f"{output['filename']} ({output['content_type']}, {len(data):,} bytes): "
                f"{got.width}x{got.height}, {got.frames} frames, {float(got.average_rate):g} "
                f"fps, {got.audio_codec} audio, {got.duration_s:.2f} s"
            )
            _compare(wanted, got, report)
            if browser:
                report.played = await play_in_chromium(base, output["url"], got.duration_s)
                say(
                    f"chromium: played {report.played['time']:.2f} s of "
                    f"{report.played['duration']:.2f} s to `ended`, "
                    f"{report.played['width']}x{report.played['height']}"
                )
    finally:
        stop_stack(process)
    return report


def start_stack(
    port: int, state_dir: Path, log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``./dev up``'s launcher, its output (and its services') into ``log_path``."""
    stack_env = {
        **os.environ,
        "PIXELBUS_PORT": str(port),
        "PIXELBUS_DEV_DIR": str(state_dir),
        "PIXELBUS_LOG_LEVEL": "WARNING",
        **env,
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "devstack.py")],
            env=stack_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_stack(process: subprocess.Popen[bytes]) -> None:
    """As Ctrl-C would: the launcher stops every service, NATS last."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def _follow(
    http: httpx.AsyncClient, task_id: str, report: Report, timeout_s: float
) -> dict[str, Any]:
    """The task once it has ended, as a client polling it sees it; its progress noted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task: dict[str, Any] = (await http.get(f"/api/tasks/{task_id}")).json()
        frames = (task.get("progress") or {}).get("frames_done")
        if frames is not None and (not report.progress or frames != report.progress[-1]):
            report.progress.append(frames)
        if task["status"] in _FINAL:
            return task
        await asyncio.sleep(0.1)
    raise CheckFailed(f"task {task_id} did not end within {timeout_s:.0f} s")


def _compare(wanted: VideoInfo, got: VideoInfo, report: Report) -> None:
    problems = []
    if (got.width, got.height) != (wanted.width, wanted.height):
        problems.append(f"size {got.width}x{got.height}, not {wanted.width}x{wanted.height}")
    if got.frames != wanted.frames or report.result.get("frames") != wanted.frames:
        problems.append(f"{got.frames} frames, not {wanted.frames}")
    if got.average_rate != wanted.average_rate:
        problems.append(f"{got.average_rate} fps, not {wanted.average_rate}")
    if got.audio_codec != wanted.audio_codec:
        problems.append(f"audio {got.audio_codec}, not {wanted.audio_codec}")
    if abs(got.duration_s - wanted.duration_s) > 0.1:
        problems.append(f"{got.duration_s:.2f} s long, not {wanted.duration_s:.2f} s")
    # (a task that has ended shows no progress: the last one seen is from before the end)
    moving = report.progress == sorted(report.progress) and report.progress[-1:] <= [wanted.frames]
    if not report.progress or not moving:
        problems.append(f"progress went {_brief(report.progress)} (of {wanted.frames} frames)")
    if problems:
        raise CheckFailed("the result differs from the input: " + "; ".join(problems))


async def play_in_chromium(base: str, url: str, duration_s: float) -> dict[str, Any]:
    """Play ``url`` in a ``<video>`` element of Debian's chromium until it ends."""
    from playwright.async_api import async_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise CheckFailed("Debian's chromium is needed to play the result (./dev installs it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            # the dashboard: same origin as the output, and its CSP lets media play
            await page.goto(f"{base}/dashboard/")
            played: dict[str, Any] = await page.evaluate(
                """async ([url, timeoutMs]) => {
                    const v = document.createElement('video');
                    v.muted = true; v.playsInline = true; v.src = url;
                    document.body.appendChild(v);
                    const ended = new Promise((resolve, reject) => {
                        v.onended = resolve;
                        v.onerror = () => reject(new Error(v.error && v.error.message));
                        setTimeout(() => reject(new Error('not ended in time')), timeoutMs);
                    });
                    await v.play();
                    await ended;
                    return {ended: v.ended, time: v.currentTime, duration: v.duration,
                            width: v.videoWidth, height: v.videoHeight};
                }""",
                [url, int((duration_s + 30) * 1000)],
            )
        except Exception as exc:  # the page's own error, in one line
            raise CheckFailed(f"chromium did not play the result: {exc}") from exc
        finally:
            await browser.close()
    if not played["ended"] or played["time"] < played["duration"] - 0.05:
        raise CheckFailed(f"chromium stopped early: {played}")
    return played


def _brief(values: list[int]) -> str:
    shown = [str(v) for v in values]
    return ", ".join(shown if len(shown) <= 12 else [*shown[:6], "…", *shown[-5:]]) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test video")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the test video")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--no-browser", action="store_true", help="skip playing it in Chromium")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="pixelbus-check-up-") as tmp:
        try:
            asyncio.run(
                check(
                    Path(tmp),
                    seconds=args.seconds,
                    size=(width, height),
                    fps=args.fps,
                    browser=not args.no_browser,
                )
            )
        except CheckFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print("OK: the video task completed through ./dev up and its result plays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
