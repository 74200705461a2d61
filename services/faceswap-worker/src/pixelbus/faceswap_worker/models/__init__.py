"""Model files: what is known about each (``registry``), what is installed in the
models directory (``store``), and how an operator installs one (``download``)."""

from pixelbus.faceswap_worker.models.registry import (
    ENGINE_FILES,
    KNOWN_MODELS,
    ModelSpec,
    TensorSpec,
    load_registry,
)
from pixelbus.faceswap_worker.models.store import ModelState, ModelStatus, ModelStore

__all__ = [
    "ENGINE_FILES",
    "KNOWN_MODELS",
    "ModelSpec",
    "ModelState",
    "ModelStatus",
    "ModelStore",
    "TensorSpec",
    "load_registry",
]
