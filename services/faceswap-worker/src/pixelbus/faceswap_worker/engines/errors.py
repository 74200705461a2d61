"""Errors raised by face-swap engines.

Each says whether another try could help (``retryable``) and has a stable ``code``::

    EngineError
    ├── NoFaceFound            no_face_found            permanent
    ├── FaceIndexOutOfRange    face_index_out_of_range  permanent
    └── EngineUnavailable      engine_unavailable       retryable (another worker may have it)
"""

from __future__ import annotations

from typing import Literal, TypeAlias

__all__ = ["EngineError", "EngineUnavailable", "FaceIndexOutOfRange", "NoFaceFound", "Which"]

Which: TypeAlias = Literal["source", "target"]


class EngineError(Exception):
    code: str = "engine_error"
    retryable: bool = False


class NoFaceFound(EngineError):
    code = "no_face_found"

    def __init__(self, which: Which) -> None:
        super().__init__(f"no face found in the {which} image")
        self.which = which


class FaceIndexOutOfRange(EngineError):
    code = "face_index_out_of_range"

    def __init__(self, which: Which, index: int, count: int) -> None:
        faces = "face" if count == 1 else "faces"
        super().__init__(
            f"{which}_face_index {index} is out of range: the {which} image has {count} {faces}"
            f" (indexes 0 to {count - 1})"
        )
        self.which = which
        self.index = index
        self.count = count


class EngineUnavailable(EngineError):
    """The engine cannot run here, e.g. its model files are missing."""

    code = "engine_unavailable"
    retryable = True
