"""SCRFD face detection (InsightFace's ``det_10g``) on onnxruntime.

The image is scaled to fit the detector's input (letterboxed at the top left), normalised
to (x - 127.5) / 128 in RGB. The model answers, per stride (8, 16, 32) and per anchor (two
per cell), a score, four distances from the anchor centre to the box sides and ten to
the five keypoints, all in strides. Decoding and non-maximum suppression are pure
functions of those arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.base import FaceBox, RGBImage
from pixelbus.faceswap_worker.engines.sessions import input_dtype

__all__ = [
    "Detection",
    "ScrfdDetector",
    "anchor_centres",
    "decode",
    "letterbox",
    "non_maximum_suppression",
]

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
FloatArray = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Detection:
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in image pixels."""
    score: float
    keypoints: FloatArray
    """5 x 2: left eye, right eye, nose tip, left and right mouth corners (x, y)."""

    @property
    def face_box(self) -> FaceBox:
        x1, y1, x2, y2 = self.box
        return FaceBox(left=round(x1), top=round(y1), right=round(x2), bottom=round(y2))


def letterbox(image: RGBImage, width: int, height: int) -> tuple[RGBImage, float]:
    """``image`` scaled to fit ``width`` x ``height`` at the top left of a black canvas,
    and the scale used."""
    rows, cols = image.shape[:2]
    scale = min(width / cols, height / rows)
    new_w, new_h = max(1, round(cols * scale)), max(1, round(rows * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return canvas, new_h / rows


@cache
def anchor_centres(height: int, width: int, stride: int, anchors: int) -> FloatArray:
    """(H/s * W/s * anchors) x 2 centres (x, y) in input pixels, row-major, each cell's
    anchors next to each other."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centres = np.repeat(centres, anchors, axis=0)
    centres.setflags(write=False)
    return centres


def decode(
    outputs: list[NDArray[np.floating]],
    input_size: tuple[int, int],
    *,
    threshold: float,
    strides: tuple[int, ...] = STRIDES,
    anchors: int = ANCHORS_PER_CELL,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes (N x 4), scores (N) and keypoints (N x 5 x 2) above ``threshold``, in the
    input's pixels. ``outputs`` are the model's outputs in its order: the scores of each
    stride, then the box distances, then the keypoint distances."""
    height, width = input_size
    count = len(strides)
    if len(outputs) < 3 * count:
        raise ValueError(f"SCRFD answers {3 * count} tensors, got {len(outputs)}")
    boxes, scores, points = [], [], []
    for i, stride in enumerate(strides):
        score = _rows(outputs[i], 1)[:, 0]
        distance = _rows(outputs[i + count], 4) * stride
        kps = _rows(outputs[i + 2 * count], 10) * stride
        centres = anchor_centres(height, width, stride, anchors)
        if len(score) != len(centres):
            raise ValueError(
                f"stride {stride}: {len(score)} scores for {len(centres)} anchors "
                f"(input {width}x{height})"
            )
        keep = np.flatnonzero(score >= threshold)
        c = centres[keep]
        d = distance[keep]
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        scores.append(score[keep])
        points.append(c[:, None, :] + kps[keep].reshape(-1, 5, 2))
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(points).astype(np.float32),
    )


def _rows(array: NDArray[np.floating], columns: int) -> FloatArray:
    """The tensor as N x columns float32 (some exports keep a batch dimension of 1)."""
    return np.asarray(array, dtype=np.float32).reshape(-1, columns)


def non_maximum_suppression(
    boxes: FloatArray, scores: FloatArray, iou_threshold: float
) -> list[int]:
    """Indexes of the boxes kept, best score first: a box overlapping a better one by
    more than ``iou_threshold`` (intersection over union) is dropped."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    keep: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        w = np.maximum(0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        h = np.maximum(0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class ScrfdDetector:
    """Faces in an RGB image, best score first. Thread-safe."""

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        iou_threshold: float = 0.4,
    ) -> None:
        self._session = session
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._dtype = input_dtype(session, model_input.name)
        height, width = model_input.shape[2], model_input.shape[3]
        fixed = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
        self.input_size = (int(height), int(width)) if fixed else input_size
        self._output_names = [o.name for o in session.get_outputs()]
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def detect(self, image: RGBImage) -> list[Detection]:
        height, width = self.input_size
        canvas, scale = letterbox(image, width, height)
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self._session.run(
            self._output_names, {self._input_name: blob.astype(self._dtype)}
        )
        boxes, scores, points = decode(outputs, self.input_size, threshold=self.score_threshold)
        keep = non_maximum_suppression(boxes, scores, self.iou_threshold)
        return [
            Detection(
                box=tuple(float(v) for v in boxes[i] / scale),  # type: ignore[arg-type]
                score=float(scores[i]),
                keypoints=points[i] / scale,
            )
            for i in keep
        ]
