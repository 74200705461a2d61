"""The built-in landmark engine on real photos shipped inside installed packages."""

from __future__ import annotations

import asyncio
import re
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image

from pixelbus.faceswap_worker.engines import (
    FaceIndexOutOfRange,
    FaceSwapEngine,
    NoFaceFound,
    RGBImage,
    SwapOptions,
)
from pixelbus.faceswap_worker.engines.base import FaceBox
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine


def photo(package: str, *path: str) -> RGBImage:
    with (files(package).joinpath(*path)).open("rb") as file:
        return np.array(Image.open(file).convert("RGB"))


ASTRONAUT = photo("skimage", "data", "astronaut.png")
GRACE_HOPPER = photo("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
COFFEE = photo("skimage", "data", "coffee.png")
ROCKET = photo("skimage", "data", "rocket.jpg")


@pytest.fixture(scope="module")
def engine() -> LandmarkEngine:
    return LandmarkEngine()


def face_change(before: RGBImage, after: RGBImage, box: FaceBox) -> float:
    """Mean absolute difference inside ``box``, over all channels."""
    top, left = max(box.top, 0), max(box.left, 0)
    region = (slice(top, box.bottom), slice(left, box.right))
    return float(np.abs(after[region].astype(np.int16) - before[region]).mean())


def test_is_a_face_swap_engine(engine: LandmarkEngine) -> None:
    assert isinstance(engine, FaceSwapEngine)
    assert engine.name == "landmark"


@pytest.mark.parametrize(
    ("source", "target"),
    [(ASTRONAUT, GRACE_HOPPER), (GRACE_HOPPER, ASTRONAUT)],
    ids=["astronaut-onto-hopper", "hopper-onto-astronaut"],
)
def test_swaps_the_face_and_leaves_the_rest(
    engine: LandmarkEngine, source: RGBImage, target: RGBImage
) -> None:
    source_before, target_before = source.copy(), target.copy()
    result = engine.swap(source, target, SwapOptions())

    assert result.shape == target.shape
    assert result.dtype == np.uint8
    (face,) = engine.find_faces(target)
    assert face_change(target, result, face.box) > 8  # a visible swap
    corner = (slice(-100, None), slice(0, 100))  # the suit, far below the face
    assert np.abs(result[corner].astype(np.int16) - target[corner]).max() <= 1
    # Still a face where the face was: the composite is not garbage.
    (found,) = engine.find_faces(result)
    assert abs(found.box.left - face.box.left) < 30
    assert abs(found.box.top - face.box.top) < 30
    # The inputs are left alone.
    assert np.array_equal(source, source_before)
    assert np.array_equal(target, target_before)


def test_every_target_face_by_default_or_only_the_chosen_one(engine: LandmarkEngine) -> None:
    pair = np.ascontiguousarray(np.hstack([GRACE_HOPPER, GRACE_HOPPER]))
    left, right = (face.box for face in engine.find_faces(pair))
    assert left.left < right.left

    both = engine.swap(ASTRONAUT, pair, SwapOptions())
    assert face_change(pair, both, left) > 8
    assert face_change(pair, both, right) > 8

    only_right = engine.swap(ASTRONAUT, pair, SwapOptions(target_face_index=1))
    assert face_change(pair, only_right, left) == 0
    assert face_change(pair, only_right, right) > 8


def test_explicit_index_of_the_only_face_equals_the_default(engine: LandmarkEngine) -> None:
    default = engine.swap(ASTRONAUT, GRACE_HOPPER, SwapOptions())
    chosen = engine.swap(
        ASTRONAUT, GRACE_HOPPER, SwapOptions(source_face_index=0, target_face_index=0)
    )
    assert np.array_equal(default, chosen)


@pytest.mark.parametrize(
    ("source", "target", "which"),
    [(COFFEE, GRACE_HOPPER, "source"), (ASTRONAUT, ROCKET, "target")],
)
def test_no_face_found_names_the_image(
    engine: LandmarkEngine, source: RGBImage, target: RGBImage, which: str
) -> None:
    with pytest.raises(NoFaceFound, match=f"^no face found in the {which} image$") as caught:
        engine.swap(source, target, SwapOptions())
    assert caught.value.which == which
    assert caught.value.retryable is False
    assert caught.value.code == "no_face_found"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SwapOptions(source_face_index=1), "source_face_index 1 is out of range: the source"
         " image has 1 face"),
        (SwapOptions(target_face_index=5), "target_face_index 5 is out of range: the target"
         " image has 1 face"),
    ],
)  # fmt: skip
def test_face_index_out_of_range(
    engine: LandmarkEngine, options: SwapOptions, message: str
) -> None:
    with pytest.raises(FaceIndexOutOfRange, match=re.escape(message)) as caught:
        engine.swap(ASTRONAUT, GRACE_HOPPER, options)
    assert caught.value.retryable is False
    assert caught.value.count == 1


def test_faces_cut_by_the_frame_and_small_faces_still_swap(engine: LandmarkEngine) -> None:
    cut = np.ascontiguousarray(ASTRONAUT[:, 200:])  # the face runs off the left edge
    small = np.ascontiguousarray(ASTRONAUT[::3, ::3])  # a face about 36 pixels wide
    for target in (cut, small):
        (face,) = engine.find_faces(target)
        result = engine.swap(GRACE_HOPPER, target, SwapOptions())
        assert result.shape == target.shape
        assert face_change(target, result, face.box) > 5


async def test_concurrent_swaps_from_threads_agree(engine: LandmarkEngine) -> None:
    expected = engine.swap(GRACE_HOPPER, ASTRONAUT, SwapOptions())
    results = await asyncio.gather(
        *(asyncio.to_thread(engine.swap, GRACE_HOPPER, ASTRONAUT, SwapOptions()) for _ in range(3))
    )
    assert all(np.array_equal(result, expected) for result in results)


@pytest.mark.parametrize(
    "bad",
    [ASTRONAUT.astype(np.float32), ASTRONAUT[:, :, 0], np.zeros((0, 5, 3), np.uint8)],
)
def test_rejects_arrays_that_are_not_rgb(engine: LandmarkEngine, bad: RGBImage) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        engine.swap(bad, GRACE_HOPPER, SwapOptions())
