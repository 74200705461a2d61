"""The dashboard in a real headless browser (Debian's chromium driven by Playwright):
submit a face swap through the form with two uploaded photos and see the result image
appear, with the task listed as COMPLETED among the recent tasks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.stack import Stack

pytestmark = pytest.mark.e2e


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is needed for the dashboard test (./dev installs it)")
    return found


def screenshot_path(tmp_path: Path) -> Path:
    """Where the result page's screenshot goes (``PIXELBUS_SCREENSHOT_DIR`` to keep it)."""
    shots = Path(os.environ.get("PIXELBUS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    return shots / "dashboard-result.png"


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
