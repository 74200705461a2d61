"""Following the chosen target face from frame to frame (pure part)."""

from __future__ import annotations

from pixelbus.faceswap_worker.engines.base import FaceBox
from pixelbus.faceswap_worker.tracking import follow


def box(left: int, top: int = 100, size: int = 80) -> FaceBox:
    return FaceBox(left=left, top=top, right=left + size, bottom=top + size)


def test_the_face_that_overlaps_most_is_followed_even_when_numbers_swap() -> None:
    # two faces crossing: the followed one moved from 100 to 130; it is now numbered 1
    assert follow(box(100), [box(60), box(130)]) == 1
    assert follow(box(130), [box(150), box(110)]) == 0


def test_without_overlap_the_nearest_face_within_reach_is_followed() -> None:
    assert follow(box(100), [box(500), box(190)]) == 1  # moved fast: 90 px, box is 80
    assert follow(box(100), [box(400)]) is None  # gone: another face is not it
    assert follow(box(100), []) is None
