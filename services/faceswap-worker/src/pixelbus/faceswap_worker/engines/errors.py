"""Errors raised by face-swap engines (all ``pixelbus.contracts.errors.PixelbusError``).

Each says whether another try could help (``retryable``) and has a stable ``code``::

    EngineError
    ├── NoFaceFound            no_face_found            permanent
    ├── FaceIndexOutOfRange    face_index_out_of_range  permanent
    ├── ModelNotInstalled      model_not_installed      permanent (says how to install it)
    ├── BadModelOutput         bad_model_output         permanent (black or NaN faces)
    ├── RemoteEngineError      remote_*                 retryable or not, as the service said
    └── EngineUnavailable      engine_unavailable       retryable (another worker may have it)
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from pixelbus.contracts.errors import PixelbusError

__all__ = [
    "BadModelOutput",
    "EngineError",
    "EngineUnavailable",
    "FaceIndexOutOfRange",
    "ModelNotInstalled",
    "NoFaceFound",
    "RemoteEngineError",
    "Which",
]

Which: TypeAlias = Literal["source", "target"]


class EngineError(PixelbusError):
    code = "engine_error"


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


class ModelNotInstalled(EngineError):
    """A model file the engine needs is missing (or damaged) in the models directory.
    The worker never downloads at task time: an operator runs ``pixelbus models pull``."""

    code = "model_not_installed"

    def __init__(self, model: str, files: list[str], detail: str = "not installed") -> None:
        commands = "; ".join(f"`pixelbus models pull {name}`" for name in files)
        super().__init__(
            f"model {model!r} cannot run on this worker: {', '.join(files)} {detail}; "
            f"install with {commands} (see `pixelbus models list`)"
        )
        self.model = model
        self.files = files


class BadModelOutput(EngineError):
    """The model produced an unusable face (black, NaN or infinite values), as fp16
    models do with some onnxruntime versions and providers."""

    code = "bad_model_output"

    def __init__(self, model: str, what: str) -> None:
        super().__init__(
            f"{model} produced {what} for a face; the model file or the execution provider "
            "is at fault (with an fp16 model, try inswapper_128)"
        )


class RemoteEngineError(EngineError):
    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message, code=code, retryable=retryable)
