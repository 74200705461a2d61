"""The progress line of ``pixelbus watch`` / ``status`` (pure: tasks made here, no
servers): a video task's bar counts frames besides the percentage."""

from __future__ import annotations

from typing import Any

from pixelbus.cli.commands.tasks import _bar, _describe
from pixelbus.client.task import Task


def task(status: str = "PROCESSING", **progress: Any) -> Task:
    body: dict[str, Any] = {"taskId": "t-1", "status": status, "workflow": "face_swap"}
    if progress:
        body["progress"] = {"attempt": 1, **progress}
    return Task.from_json(body)


def test_a_video_task_shows_its_frames_and_the_percentage() -> None:
    video = task(fraction=0.4, frames_done=100, frames_total=250, message="100 of 250 frames")
    assert video.frames == (100, 250)
    assert _bar(video, width=10) == "[####......]  40%  PROCESSING  frames 100/250"
    assert "  [####" in _describe(video) and "frames 100/250" in _describe(video)


def test_frames_give_the_fraction_when_the_task_reports_none() -> None:
    assert _bar(task(frames_done=50, frames_total=200), width=4) == (
        "[#...]  25%  PROCESSING  frames 50/200"
    )
    assert _bar(task(frames_total=200), width=4) == "[....]   0%  PROCESSING  frames 0/200"


def test_an_image_task_shows_its_message_as_before() -> None:
    image = task(fraction=0.5, message="swapping faces")
    assert image.frames is None
    assert _bar(image, width=4) == "[##..]  50%  PROCESSING  swapping faces"
    assert _bar(task(node="7"), width=4) == "[....]   ?%  PROCESSING"
    assert _bar(task("COMPLETED", fraction=0.9), width=4) == "[####] 100%  COMPLETED"
