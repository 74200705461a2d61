"""The chosen target face of a video, followed from frame to frame.

``target_face_index`` picks a face by its number in the first frame; in the next frames
faces are renumbered as they move (two faces crossing swap their left-right order), so
the same number would jump to the other person. ``TargetTracker`` numbers the first
frame's faces as the engine does, then in each next frame takes the face that overlaps
the previous one most (or, when none overlaps, the nearest within one and a half face
widths), and hands the engine that face's number in this frame. Only when the face is lost (it left
the picture) is it chosen by its number again. Without an index (every face is swapped)
there is nothing to follow.
"""

from __future__ import annotations

import dataclasses
import math

from pixelbus.faceswap_worker.engines.base import FaceBox, FaceSwapEngine, RGBImage, SwapOptions
from pixelbus.faceswap_worker.engines.errors import NoFaceFound
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine

__all__ = ["TargetTracker", "follow", "locate_faces"]


def locate_faces(
    engine: FaceSwapEngine, frame: RGBImage, options: SwapOptions
) -> list[FaceBox] | None:
    """The frame's face boxes numbered as ``engine.swap`` numbers them; ``None`` for an
    engine that does not say where faces are (the remote one: it is not followed)."""
    if isinstance(engine, InswapperEngine):
        return [d.face_box for d in engine.find_faces(frame, options.face_order)]
    if isinstance(engine, LandmarkEngine):
        return [f.box for f in engine.find_faces(frame)]
    return None


def _overlap(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union."""
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.area + b.area - inter)


def _distance(a: FaceBox, b: FaceBox) -> float:
    return math.dist(
        ((a.left + a.right) / 2, (a.top + a.bottom) / 2),
        ((b.left + b.right) / 2, (b.top + b.bottom) / 2),
    )


def follow(previous: FaceBox, boxes: list[FaceBox]) -> int | None:
    """The number of the face in ``boxes`` that is ``previous`` moved on, if any. Pure."""
    if not boxes:
        return None
    best = max(range(len(boxes)), key=lambda i: _overlap(previous, boxes[i]))
    if _overlap(previous, boxes[best]) > 0:
        return best
    nearest = min(range(len(boxes)), key=lambda i: _distance(previous, boxes[i]))
    reach = 1.5 * max(previous.right - previous.left, previous.bottom - previous.top)
    return nearest if _distance(previous, boxes[nearest]) <= reach else None


class TargetTracker:
    def __init__(self, engine: FaceSwapEngine, options: SwapOptions) -> None:
        self._engine = engine
        self._options = options
        self._index = options.target_face_index
        self._last: FaceBox | None = None

    def options_for(self, frame: RGBImage) -> SwapOptions:
        """The options that swap the followed face in ``frame``; raises ``NoFaceFound``
        (the frame passes unchanged) when the chosen face is not in it."""
        if self._index is None:
            return self._options
        boxes = locate_faces(self._engine, frame, self._options)
        if boxes is None:
            return self._options
        chosen = None if self._last is None else follow(self._last, boxes)
        if chosen is None:  # first frame, or the face was lost: choose by its number
            if self._index >= len(boxes):
                self._last = None
                raise NoFaceFound("target")
            chosen = self._index
        self._last = boxes[chosen]
        return dataclasses.replace(self._options, target_face_index=chosen)
