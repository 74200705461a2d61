"""The engine-independent face selection rules and options."""

from __future__ import annotations

import pytest

from pixelbus.faceswap_worker.engines import FaceIndexOutOfRange, NoFaceFound, SwapOptions
from pixelbus.faceswap_worker.engines.base import (
    FaceBox,
    in_reading_order,
    select_source,
    select_targets,
)

SMALL = FaceBox(left=10, top=10, right=40, bottom=40)
LARGE = FaceBox(left=300, top=50, right=400, bottom=150)
MIDDLE = FaceBox(left=100, top=200, right=160, bottom=260)


def test_reading_order_is_left_to_right_then_top_to_bottom() -> None:
    upper = FaceBox(left=100, top=5, right=120, bottom=25)
    assert in_reading_order([LARGE, MIDDLE, SMALL, upper]) == [SMALL, upper, MIDDLE, LARGE]


def test_the_largest_source_face_by_default() -> None:
    assert select_source([SMALL, MIDDLE, LARGE], None) == 2
    assert select_source([SMALL, MIDDLE, LARGE], 0) == 0


def test_every_target_face_by_default() -> None:
    assert select_targets([SMALL, MIDDLE, LARGE], None) == [0, 1, 2]
    assert select_targets([SMALL, MIDDLE, LARGE], 1) == [1]


def test_no_faces_and_indexes_out_of_range() -> None:
    with pytest.raises(NoFaceFound, match="source image"):
        select_source([], None)
    with pytest.raises(NoFaceFound, match="target image"):
        select_targets([], 0)
    with pytest.raises(FaceIndexOutOfRange, match="has 3 faces"):
        select_targets([SMALL, MIDDLE, LARGE], 3)


@pytest.mark.parametrize("field", ["source_face_index", "target_face_index"])
def test_negative_indexes_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SwapOptions(**{field: -1})
