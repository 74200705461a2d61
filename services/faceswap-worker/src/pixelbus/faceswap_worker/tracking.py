"""The target faces of a video, followed from frame to frame and steadied. Pure.

Following: ``target_face_index`` picks a face by its number in the first frame; in the
next frames faces are renumbered as they move (two faces crossing swap their left-right
order), so the same number would jump to the other person. ``FaceFollower`` takes the
numbered face in the first frame, then in each next frame the face that overlaps the
previous one most (or, when none overlaps, the nearest within one and a half face
widths). Only when the face is lost (it left the picture) is it chosen by its number
again; while it is lost, frames pass unchanged.

Steadying: a landmark detector places each point a pixel or two differently from frame
to frame, and the swapped face would shimmer with it. Each followed face's *shape* (its
landmarks relative to their mean) is averaged with its shape in the frames before
(exponentially, ``SHAPE_WEIGHT`` for the new frame) while its *position* (the mean) is
this frame's: the jitter goes, and a moving face is not dragged behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.base import FaceBox, LocatedFace

__all__ = ["SHAPE_WEIGHT", "FaceFollower", "follow", "steady"]

#: The weight of the new frame's shape in the running average of a face's shape.
SHAPE_WEIGHT = 0.5

Points = NDArray[np.float32]


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
    """The number of the face in ``boxes`` that is ``previous`` moved on, if any."""
    if not boxes:
        return None
    best = max(range(len(boxes)), key=lambda i: _overlap(previous, boxes[i]))
    if _overlap(previous, boxes[best]) > 0:
        return best
    nearest = min(range(len(boxes)), key=lambda i: _distance(previous, boxes[i]))
    reach = 1.5 * max(previous.right - previous.left, previous.bottom - previous.top)
    return nearest if _distance(previous, boxes[nearest]) <= reach else None


def steady(points: Points, shape_before: Points | None) -> tuple[Points, Points]:
    """``points`` with their shape averaged with ``shape_before``; also the new average
    shape (for the next frame)."""
    centre = points.mean(axis=0)
    shape = points - centre
    if shape_before is not None and shape_before.shape == shape.shape:
        shape = SHAPE_WEIGHT * shape + (1 - SHAPE_WEIGHT) * shape_before
    return (centre + shape).astype(np.float32), shape.astype(np.float32)


@dataclass(frozen=True, slots=True)
class _Track:
    box: FaceBox
    shape: Points


class FaceFollower:
    """Per frame: the faces to swap (the followed one, or every face when no index was
    asked for), their landmarks steadied against the same faces in the frame before."""

    def __init__(self, index: int | None) -> None:
        self._index = index
        self._tracks: list[_Track] = []

    def choose(self, faces: list[LocatedFace]) -> list[LocatedFace]:
        chosen = faces if self._index is None else self._followed(faces)
        before = self._tracks
        self._tracks = []
        steadied = []
        for face in chosen:
            match = follow(face.box, [track.box for track in before])
            points, shape = steady(face.points, None if match is None else before[match].shape)
            self._tracks.append(_Track(face.box, shape))
            steadied.append(LocatedFace(face.box, points))
        return steadied

    def _followed(self, faces: list[LocatedFace]) -> list[LocatedFace]:
        assert self._index is not None
        boxes = [face.box for face in faces]
        found = follow(self._tracks[0].box, boxes) if self._tracks else None
        if found is None:  # first frame, or the face was lost: choose by its number
            if self._index >= len(faces):
                return []
            found = self._index
        return [faces[found]]
