"""Face-swap engines behind one interface (``FaceSwapEngine``).

The built-in offline engine is ``pixelbus.faceswap_worker.engines.landmark.LandmarkEngine``;
it is not imported here so that other engines do not load dlib.
"""

from pixelbus.faceswap_worker.engines.base import FaceSwapEngine, RGBImage, SwapOptions
from pixelbus.faceswap_worker.engines.errors import (
    EngineError,
    EngineUnavailable,
    FaceIndexOutOfRange,
    NoFaceFound,
)

__all__ = [
    "EngineError",
    "EngineUnavailable",
    "FaceIndexOutOfRange",
    "FaceSwapEngine",
    "NoFaceFound",
    "RGBImage",
    "SwapOptions",
]
