"""The built-in offline engine: dlib's HOG face detector and 68-point landmarks, then a
landmark-based composite (see ``compositing``).

The model files come from the ``face-recognition-models`` package; they are found
without importing it (it imports ``pkg_resources``, which current setuptools lacks).
dlib's 68-point model is documented as not for commercial products.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import dlib  # type: ignore[import-untyped]
import numpy as np
from cv2.typing import MatLike

from pixelbus.faceswap_worker.engines.base import (
    FaceBox,
    LocatedFace,
    RGBImage,
    SwapOptions,
    in_reading_order,
    require_rgb,
    select_source,
    swap_as_frame,
)
from pixelbus.faceswap_worker.engines.compositing import Points, composite_face
from pixelbus.faceswap_worker.engines.errors import EngineUnavailable

__all__ = ["Face", "LandmarkEngine", "find_model_dir"]

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_UPSAMPLE_UP_TO = 1000  # longest side up to which a second, upsampled detection is tried


def find_model_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "models"
        if (candidate / PREDICTOR_FILE).is_file():
            return candidate
    raise EngineUnavailable(
        f"the landmark engine needs {PREDICTOR_FILE} from the face-recognition-models package,"
        " which is not installed"
    )


@dataclass(frozen=True, slots=True)
class Face:
    box: FaceBox
    points: Points
    """68 x 2 landmarks (x, y) in the iBUG 300-W order."""


class LandmarkEngine:
    """Loads its models once (a few seconds); ``swap`` may be called from many threads:
    the dlib calls are serialised, the image work runs in parallel."""

    name = "landmark"

    def __init__(self, model_dir: Path | None = None, *, detect_max_side: int = 1280) -> None:
        predictor_path = (model_dir or find_model_dir()) / PREDICTOR_FILE
        if not predictor_path.is_file():
            raise EngineUnavailable(f"landmark model not found: {predictor_path}")
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._detect_max_side = detect_max_side
        self._lock = threading.Lock()

    def swap(self, source: RGBImage, target: RGBImage, options: SwapOptions) -> RGBImage:
        return swap_as_frame(self, source, target, options)

    def prepare_source(self, source: RGBImage, options: SwapOptions) -> tuple[RGBImage, Points]:
        """The source image and the landmarks of its chosen face."""
        require_rgb(source, "source")
        faces = self.find_faces(source)
        chosen = faces[select_source([f.box for f in faces], options.source_face_index)]
        return source, chosen.points

    def locate(self, frame: RGBImage, options: SwapOptions) -> list[LocatedFace]:
        return [LocatedFace(face.box, face.points) for face in self.find_faces(frame)]

    def swap_located(
        self, prepared: object, frame: RGBImage, faces: Sequence[LocatedFace], options: SwapOptions
    ) -> RGBImage:
        source, source_points = cast(tuple[RGBImage, Points], prepared)
        result = frame.copy()
        for face in faces:
            result = composite_face(result, source, source_points, face.points)
        return result

    def find_faces(self, image: RGBImage) -> list[Face]:
        """Faces with their landmarks, in reading order."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        boxes = in_reading_order(self._detect(grey))
        with self._lock:
            shapes = [
                self._predictor(grey, dlib.rectangle(b.left, b.top, b.right, b.bottom))
                for b in boxes
            ]
        return [
            Face(box=box, points=np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32))
            for box, shape in zip(boxes, shapes, strict=True)
        ]

    def _detect(self, grey: MatLike) -> list[FaceBox]:
        """Detect on a copy no longer than ``detect_max_side`` (HOG cost grows with the
        pixel count); when nothing is found in a small image, look again upsampled once."""
        scale = min(1.0, self._detect_max_side / max(grey.shape))
        small: MatLike = grey
        if scale < 1.0:
            size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
            small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        with self._lock:
            found = self._detector(small, 0)
            if not found and max(small.shape) <= _UPSAMPLE_UP_TO:
                found = self._detector(small, 1)
        return [
            FaceBox(
                left=round(r.left() / scale),
                top=round(r.top() / scale),
                right=round(r.right() / scale),
                bottom=round(r.bottom() / scale),
            )
            for r in found
        ]
