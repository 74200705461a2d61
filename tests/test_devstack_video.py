"""``./dev up`` as a user runs it, with a video target: ``tests/devstack_video.py`` on a
short, small clip (``just check-up-video`` runs the 10 s 720p one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devstack_video import check

pytestmark = [pytest.mark.e2e]


async def test_a_video_completes_through_dev_up_and_plays_in_chromium(tmp_path: Path) -> None:
    said: list[str] = []
    report = await check(tmp_path, seconds=1.6, size=(320, 240), say=said.append)
    assert report.result["frames"] == 40 and report.result["format"] == "mp4"
    assert (report.result["width"], report.result["height"]) == (320, 240)
    assert report.progress and report.progress == sorted(report.progress)
    assert report.progress[-1] <= 40
    assert report.played["ended"] and (report.played["width"], report.played["height"]) == (
        320,
        240,
    )
    assert report.played["duration"] > 1.5
    assert any(line.startswith("chromium: played") for line in said), said
