"""The interface every face-swap engine implements, and the face-selection rules they
share: faces are numbered in reading order (by the left edge of their box, then the top);
by default the largest source face goes onto every target face."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pixelbus.contracts.face_swap import FACE_ORDERS, FaceOrder
from pixelbus.faceswap_worker.engines.errors import FaceIndexOutOfRange, NoFaceFound, Which

__all__ = [
    "FACE_ORDERS",
    "FaceBox",
    "FaceOrder",
    "FaceSwapEngine",
    "FrameSwapEngine",
    "LocatedFace",
    "RGBImage",
    "SwapOptions",
    "in_reading_order",
    "order_faces",
    "require_rgb",
    "select_source",
    "select_targets",
    "swap_as_frame",
]

RGBImage: TypeAlias = NDArray[np.uint8]
"""An HxWx3 uint8 array in RGB order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SwapOptions:
    source_face_index: int | None = None
    """Which source face to use; None: the largest."""
    target_face_index: int | None = None
    """Which target face to replace; None: every one ("many")."""
    face_order: FaceOrder = "left-right"
    """How faces are numbered in both images."""
    enhancer: str | None = None
    """A face enhancer model to run on each swapped face; None: none."""
    enhancer_blend: float = 0.8
    """How much of the enhanced face shows over the swapped one (0 to 1)."""

    def __post_init__(self) -> None:
        for name in ("source_face_index", "target_face_index"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value}")
        if self.face_order not in FACE_ORDERS:
            raise ValueError(f"face_order must be one of {', '.join(FACE_ORDERS)}")
        if not 0.0 <= self.enhancer_blend <= 1.0:
            raise ValueError(f"enhancer_blend must be within 0..1, got {self.enhancer_blend}")


@runtime_checkable
class FaceSwapEngine(Protocol):
    """Puts a face of ``source`` onto faces of ``target``.

    Both are RGB uint8 arrays; the result has the target's shape. Engines raise
    EngineError subclasses for expected failures and are called from worker threads
    (``asyncio.to_thread``), so ``swap`` must be safe to call concurrently."""

    name: str

    def swap(self, source: RGBImage, target: RGBImage, options: SwapOptions) -> RGBImage: ...


@dataclass(frozen=True, slots=True)
class LocatedFace:
    """A face found in a frame: its box and its landmarks (x, y in frame pixels; 68 for
    the built-in engine, 5 keypoints for inswapper), which a caller may smooth."""

    box: FaceBox
    points: NDArray[np.float32]


@runtime_checkable
class FrameSwapEngine(Protocol):
    """An engine that swaps a video frame by frame: the source face is prepared once,
    each frame's faces are located, and the caller (which follows and smooths them)
    hands back the ones to replace."""

    name: str

    def prepare_source(self, source: RGBImage, options: SwapOptions) -> object: ...

    def locate(self, frame: RGBImage, options: SwapOptions) -> list[LocatedFace]:
        """The frame's faces, numbered as ``swap`` numbers them."""
        ...

    def swap_located(
        self, prepared: object, frame: RGBImage, faces: Sequence[LocatedFace], options: SwapOptions
    ) -> RGBImage: ...


@dataclass(frozen=True, slots=True)
class FaceBox:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


def in_reading_order(boxes: Sequence[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda box: (box.left, box.top))


def order_faces(boxes: Sequence[FaceBox], order: FaceOrder = "left-right") -> list[int]:
    """The indexes of ``boxes`` in the given order (ties broken by reading order)."""

    def key(i: int) -> tuple[float, ...]:
        box = boxes[i]
        reading = (box.left, box.top)
        return {
            "left-right": reading,
            "right-left": (-box.right, box.top),
            "top-bottom": (box.top, box.left),
            "bottom-top": (-box.bottom, box.left),
            "large-small": (-box.area, *reading),
            "small-large": (box.area, *reading),
        }[order]

    return sorted(range(len(boxes)), key=key)


def select_source(boxes: Sequence[FaceBox], index: int | None) -> int:
    """The index of the source face to use (``boxes`` in reading order)."""
    _require_faces("source", boxes, index)
    if index is not None:
        return index
    return max(range(len(boxes)), key=lambda i: boxes[i].area)


def select_targets(boxes: Sequence[FaceBox], index: int | None) -> list[int]:
    """The indexes of the target faces to replace (``boxes`` in reading order)."""
    _require_faces("target", boxes, index)
    return list(range(len(boxes))) if index is None else [index]


def swap_as_frame(
    engine: FrameSwapEngine, source: RGBImage, target: RGBImage, options: SwapOptions
) -> RGBImage:
    """``FaceSwapEngine.swap`` of an engine that swaps frame by frame: the target image
    is one frame, and its faces chosen by ``options`` are replaced."""
    prepared = engine.prepare_source(source, options)
    require_rgb(target, "target")
    faces = engine.locate(target, options)
    chosen = select_targets([f.box for f in faces], options.target_face_index)
    return engine.swap_located(prepared, target, [faces[i] for i in chosen], options)


def _require_faces(which: Which, boxes: Sequence[FaceBox], index: int | None) -> None:
    if not boxes:
        raise NoFaceFound(which)
    if index is not None and index >= len(boxes):
        raise FaceIndexOutOfRange(which, index, len(boxes))


def require_rgb(image: RGBImage, which: Which) -> None:
    """Reject arrays that are not HxWx3 uint8: a caller's bug, hence ValueError."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"the {which} image must be an HxWx3 uint8 RGB array, "
            f"got {image.dtype} with shape {image.shape}"
        )
