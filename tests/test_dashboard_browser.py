"""The dashboard in a real headless browser (Debian's chromium driven by Playwright):
submit a face swap through the form with two uploaded photos and see the result image
appear, with the task listed as COMPLETED among the recent tasks; and a face swap into an
uploaded video, counted in frames while it runs, whose result plays in the page."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from pixelbus.testkit.nats_server import NatsServer
from tests.stack import Stack, running_stack, spawn_worker

pytestmark = pytest.mark.e2e


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is needed for the dashboard test (./dev installs it)")
    return found


def screenshot_path(tmp_path: Path, name: str = "dashboard-result.png") -> Path:
    """Where the result page's screenshot goes (``PIXELBUS_SCREENSHOT_DIR`` to keep it)."""
    shots = Path(os.environ.get("PIXELBUS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    return shots / name


async def test_face_swap_through_the_form_shows_the_result_image(
    stack: Stack, astronaut: Path, grace_hopper: Path, tmp_path: Path
) -> None:
    listed = await stack.http.post(
        "/api/tasks/create", json={"workflow": "probe", "environment": "face_swap"}
    )
    probe_id = listed.json()["taskId"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{stack.base_url}/dashboard/")
            # The recent tasks list shows the task created before the page opened.
            await expect(page.locator(f'tr[data-task="{probe_id}"]')).to_be_visible(timeout=15_000)

            await page.set_input_files("#source", str(astronaut))
            await page.set_input_files("#target", str(grace_hopper))
            await page.fill("#resolution", "256x300")
            await page.click("#submit")

            await expect(page.locator("#detail-status")).to_have_text("COMPLETED", timeout=60_000)
            image = page.locator("#detail-outputs img.output-image")
            await expect(image).to_be_visible(timeout=15_000)
            await page.wait_for_function(
                "() => { const i = document.querySelector('#detail-outputs img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=15_000,
            )
            size = await image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            task_id = await page.locator("#detail-id").text_content()
            row = page.locator(f'tr[data-task="{task_id}"]')
            await expect(row).to_have_attribute("data-status", "COMPLETED")
            await page.screenshot(path=str(screenshot_path(tmp_path)), full_page=True)
        finally:
            await browser.close()
    assert size == [256, 300]  # the swapped photo, decoded by the browser
    assert errors == []
    api = (await stack.http.get(f"/api/tasks/{task_id}")).json()
    assert (
        api["status"] == "COMPLETED" and api["result"]["outputs"][0]["content_type"] == "image/png"
    )


async def test_dashboard_files_are_served_and_unknown_ones_are_404(stack: Stack) -> None:
    index = await stack.http.get("/dashboard/")
    assert index.status_code == 200 and "face-swap-form" in index.text
    script = await stack.http.get("/dashboard/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert (await stack.http.get("/dashboard/secret.py")).status_code == 404
    assert (await stack.http.get("/dashboard", follow_redirects=False)).status_code == 307


#: Records every text the task's step shows (a video's progress is counted in frames).
RECORD_STEPS = """
window.steps = [];
new MutationObserver(() => window.steps.push(document.getElementById('detail-step').textContent))
  .observe(document.getElementById('detail-step'), {childList: true, characterData: true, subtree: true});
"""


@pytest.mark.parametrize("output_format", ["mp4", "webm"])
async def test_video_face_swap_through_the_form_plays_the_result_video(
    nats_server: NatsServer, astronaut: Path, tmp_path: Path, output_format: str
) -> None:
    """H.264 (mp4, the default) and VP9 (webm) both play in Debian's chromium."""
    from pixelbus.testkit import videos

    target = tmp_path / "target.mp4"
    target.write_bytes(
        videos.pan_video(videos.photos()["hopper"], seconds=1.0, fps=25, size=(256, 256))
    )
    async with running_stack(
        nats_server.url,
        tmp_path,
        worker=False,
        PIXELBUS_VIDEO_CHUNK_S="0.4",
        # frames reported while each chunk is swapped, not only per chunk: three chunks of
        # a small video can all end within one state update on a busy machine
        PIXELBUS_VIDEO_PROGRESS_INTERVAL_S="0.05",
    ) as stack:
        # A worker process of its own: the splitter, chunk workers and assembler of a video
        # run there (the in-process worker of the other tests does not fan videos out).
        worker = spawn_worker({**stack.env, "PIXELBUS_LOG_LEVEL": "WARNING"})
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
                )
                try:
                    page = await browser.new_page(viewport={"width": 1200, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(f"{stack.base_url}/dashboard/")
                    await page.evaluate(RECORD_STEPS)
                    assert await page.get_attribute("#target", "accept") == "image/*,video/*"

                    await page.set_input_files("#source", str(astronaut))
                    await page.set_input_files("#target", str(target))
                    await page.select_option("#output-format", output_format)
                    await page.click("#submit")

                    await expect(page.locator("#detail-status")).to_have_text(
                        "COMPLETED", timeout=120_000
                    )
                    video = page.locator("#detail-outputs video.output-video")
                    await expect(video).to_be_visible(timeout=15_000)
                    attributes = await video.evaluate(
                        "v => ['controls', 'muted', 'playsinline'].filter(a => v.hasAttribute(a))"
                    )
                    await page.wait_for_function(
                        "document.querySelector('#detail-outputs video').readyState >= 1",
                        timeout=15_000,
                    )
                    # muted and inline: play() needs no user gesture
                    await video.evaluate("v => v.play()")
                    await page.wait_for_function(
                        "document.querySelector('#detail-outputs video').ended", timeout=30_000
                    )
                    played = await video.evaluate(
                        "v => ({width: v.videoWidth, height: v.videoHeight, duration: v.duration,"
                        " time: v.currentTime, error: v.error && v.error.message})"
                    )
                    steps: list[str] = await page.evaluate("window.steps")
                    task_id = await page.locator("#detail-id").text_content()
                    await page.screenshot(
                        path=str(
                            screenshot_path(tmp_path, f"dashboard-{output_format}-result.png")
                        ),
                        full_page=True,
                    )
                finally:
                    await browser.close()
            api = (await stack.http.get(f"/api/tasks/{task_id}")).json()
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert errors == []
    assert attributes == ["controls", "muted", "playsinline"]
    assert played["error"] is None and (played["width"], played["height"]) == (256, 256), played
    assert played["duration"] > 0.8 and played["time"] >= played["duration"] - 0.05, played
    assert api["status"] == "COMPLETED"
    (output,) = api["result"]["outputs"]
    assert (output["filename"], output["content_type"]) == (
        f"result.{output_format}",
        f"video/{output_format}",
    )
    total = api["result"]["frames"]
    assert total == 25  # 1 s at 25 fps
    # while it ran, the page counted the swap in frames of the video
    counted = [m for step in steps if (m := re.fullmatch(r"frames (\d+) / (\d+)", step))]
    assert counted and all(int(m[2]) == total for m in counted), steps
    assert int(counted[-1][1]) == total, steps
