"""Alignment (pure) and paste-back."""

from __future__ import annotations

import numpy as np
import pytest

from pixelbus.faceswap_worker.engines.alignment import (
    ARCFACE_TEMPLATE,
    arcface_template,
    similarity_transform,
    warp_face,
)
from pixelbus.faceswap_worker.engines.pasteback import paste_back, soft_mask


def test_similarity_transform_recovers_rotation_scale_and_shift() -> None:
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE
    dst = src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_insightface_estimate_norm() -> None:
    from insightface.utils.face_align import estimate_norm

    keypoints = ARCFACE_TEMPLATE * 2.3 + np.array([300.0, 120.0])
    keypoints[1] += (3.0, -2.0)  # not an exact similarity: least squares decides
    for size in (112, 128):
        ours = similarity_transform(keypoints, arcface_template(size))
        np.testing.assert_allclose(ours, estimate_norm(keypoints, size), atol=1e-6)


def test_arcface_template_sizes() -> None:
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE * 2)
    assert arcface_template(128)[0, 0] == pytest.approx(38.2946 + 8)
    with pytest.raises(ValueError, match="112 or 128"):
        arcface_template(100)


def test_soft_mask_is_zero_at_the_border_and_one_inside() -> None:
    mask = soft_mask(128)
    assert mask[0].max() == 0 and mask[:, -1].max() == 0
    assert mask[64, 64] == pytest.approx(1.0)
    assert 0 < mask[64, 14] < 1  # feathered


def test_paste_back_round_trip_touches_only_the_footprint() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    before = frame.copy()
    matrix = similarity_transform(
        ARCFACE_TEMPLATE + np.array([150.0, 100.0]), arcface_template(128)
    )  # a 128 crop around (150..280, 100..230)
    crop = warp_face(frame, matrix, 128)
    white = np.full_like(crop, 255)
    result = paste_back(frame, white, matrix, soft_mask(128))
    assert np.array_equal(frame, before)  # the input is not modified
    changed = np.argwhere((result != frame).any(axis=2))
    assert changed.size
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert x0 >= 100 and x1 <= 290 and y0 >= 90 and y1 <= 240
    centre = result[160:175, 200:215]
    assert centre.min() == 255  # fully replaced in the middle
    # Pasting the crop itself back changes nothing more than interpolation does.
    same = paste_back(frame, crop, matrix, soft_mask(128))
    assert np.abs(same.astype(int) - frame).mean() < 3


def test_blend_is_colour_safe_at_the_extremes() -> None:
    frame = np.full((200, 200, 3), 250, np.uint8)
    matrix = similarity_transform(ARCFACE_TEMPLATE + 40.0, arcface_template(128))
    result = paste_back(frame, np.full((128, 128, 3), 255, np.uint8), matrix, soft_mask(128))
    assert result.min() >= 250  # no wrap-around to dark values
    half = paste_back(frame, np.zeros((128, 128, 3), np.uint8), matrix, soft_mask(128), opacity=0.5)
    assert half.min() >= 124
