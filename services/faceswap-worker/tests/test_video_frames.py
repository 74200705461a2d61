"""A chunk's frames through the built-in engine (no servers): frames without a face pass
unchanged, the others are swapped, and a source without a face stops the chunk."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pixelbus.faceswap_worker.engines.base import SwapOptions
from pixelbus.faceswap_worker.engines.errors import NoFaceFound
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.video import _Stopped, swap_frames
from pixelbus.testkit import videos


@pytest.fixture(scope="module")
def engine() -> LandmarkEngine:
    return LandmarkEngine()


def test_frames_without_a_face_pass_unchanged_and_are_counted(engine: LandmarkEngine) -> None:
    photos = videos.photos()
    hopper = np.ascontiguousarray(photos["hopper"][:400, :320])
    coffee = np.ascontiguousarray(photos["coffee"][:400, :320])
    counts = [0, 0]
    frames = iter([(0, hopper), (1, coffee), (2, hopper)])
    out = list(
        swap_frames(frames, photos["astronaut"], engine, SwapOptions(), threading.Event(), counts)
    )
    assert [pts for pts, _ in out] == [0, 1, 2]
    assert np.array_equal(out[1][1], coffee)
    assert np.abs(out[0][1].astype(int) - hopper).mean() > 1
    assert counts == [3, 2]


def test_a_source_without_a_face_and_a_stop_end_the_chunk(engine: LandmarkEngine) -> None:
    photos = videos.photos()
    frames = iter([(0, photos["hopper"])])
    options = SwapOptions()
    with pytest.raises(NoFaceFound) as caught:
        list(swap_frames(frames, photos["coffee"], engine, options, threading.Event(), [0, 0]))
    assert caught.value.which == "source"
    stop = threading.Event()
    stop.set()
    with pytest.raises(_Stopped):
        hopper = iter([(0, photos["hopper"])])
        list(swap_frames(hopper, photos["astronaut"], engine, options, stop, [0, 0]))
