"""SCRFD decoding and NMS (pure), and the detector on real photos with the stand-in."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import Photos, StandIns
from pixelbus.faceswap_worker.engines.base import FaceBox
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.scrfd import (
    ScrfdDetector,
    anchor_centres,
    decode,
    letterbox,
    non_maximum_suppression,
)
from pixelbus.faceswap_worker.engines.sessions import SessionCache


def iou(a: FaceBox, b: FaceBox) -> float:
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return w * h / (a.area + b.area - w * h)


def test_anchor_centres_are_row_major_with_two_anchors_per_cell() -> None:
    centres = anchor_centres(32, 64, 16, 2)
    assert centres.shape == (2 * 4 * 2, 2)
    assert centres[:4].tolist() == [[0, 0], [0, 0], [16, 0], [16, 0]]
    assert centres[8].tolist() == [0, 16]  # second row starts after four cells


def test_decode_turns_distances_into_boxes_and_keypoints() -> None:
    size = (64, 64)
    outputs = []
    for stride in (8, 16, 32):
        n = (64 // stride) ** 2 * 2
        outputs.append(np.zeros((n, 1), np.float32))
    boxes = [np.zeros((len(s), 4), np.float32) for s in outputs]
    kps = [np.zeros((len(s), 10), np.float32) for s in outputs]
    # stride 16, cell (row 1, col 2) anchor 1: centre (32, 16)
    index = (1 * 4 + 2) * 2 + 1
    outputs[1][index] = 0.9
    boxes[1][index] = [1, 0.5, 2, 1.5]  # in strides
    kps[1][index] = [0.5, 0.25] * 5
    found, scores, points = decode(outputs + boxes + kps, size, threshold=0.5)
    assert scores.tolist() == pytest.approx([0.9])
    assert found[0].tolist() == [16, 8, 64, 40]
    assert points[0].tolist() == [[40, 20]] * 5


def test_decode_refuses_outputs_of_another_input_size() -> None:
    outputs = (
        [np.zeros((10, 1), np.float32)] * 3 + [np.zeros((10, 4))] * 3 + [np.zeros((10, 10))] * 3
    )
    with pytest.raises(ValueError, match="anchors"):
        decode(outputs, (640, 640), threshold=0.5)


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert non_maximum_suppression(boxes, scores, 0.4) == [1, 2]
    assert non_maximum_suppression(boxes, scores, 0.99) == [1, 0, 2]  # 3 duplicates 0


def test_letterbox_keeps_the_aspect_ratio_at_the_top_left(photos: Photos) -> None:
    canvas, scale = letterbox(photos.group, 640, 640)  # 1280 x 886
    assert canvas.shape == (640, 640, 3)
    assert scale == pytest.approx(443 / 886)
    assert not canvas[443:].any()  # the padding is black
    assert canvas[:443].mean() > 20


def test_the_detector_lands_on_the_faces_the_built_in_detector_finds(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    found = inswapper.find_faces(photos.group)
    builtin = [f.box for f in standins.builtin_faces["group"]]
    assert len(builtin) == 6 and len(found) == 6  # duplicates removed, decoy under threshold
    for detection, box in zip(found, builtin, strict=True):  # both in reading order
        assert iou(detection.face_box, box) > 0.95
        eyes = detection.keypoints[:2]
        assert box.left < eyes[:, 0].min() < eyes[:, 0].max() < box.right
        assert box.top < eyes[:, 1].min() < box.bottom
    assert [d.score for d in found] == pytest.approx([0.92] * 6)


def test_no_face_in_a_photo_without_one(photos: Photos, inswapper: InswapperEngine) -> None:
    assert inswapper.find_faces(photos.coffee) == []


def test_insightface_reads_the_stand_in_the_same_way(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    """InsightFace's own SCRFD on the same stand-in file: the same six boxes."""
    from insightface.model_zoo.scrfd import SCRFD

    reference = SCRFD(model_file=str(standins.directory / "det_10g.onnx"))
    reference.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    bgr = cv2.cvtColor(photos.group, cv2.COLOR_RGB2BGR)
    boxes, keypoints = reference.detect(bgr, input_size=(640, 640))
    order = np.argsort(boxes[:, 0])
    found = inswapper.find_faces(photos.group)  # left to right
    assert len(boxes) == len(found) == 6
    np.testing.assert_allclose([d.box for d in found], boxes[order, :4], atol=2.5)
    np.testing.assert_allclose([d.keypoints for d in found], keypoints[order], atol=2.5)


def test_a_fixed_input_size_is_read_from_the_model(standins: StandIns) -> None:
    session = SessionCache(["CPUExecutionProvider"]).get(standins.directory / "det_10g.onnx")
    detector = ScrfdDetector(session, input_size=(320, 320))
    assert detector.input_size == (320, 320)  # the stand-in's input is dynamic, like det_10g
