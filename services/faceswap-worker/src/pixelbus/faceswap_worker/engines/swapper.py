"""The inswapper model (``inswapper_128`` and its fp16 variant) on onnxruntime.

Inputs: ``target``, the face aligned to the 128 ArcFace template, RGB in 0..1, and
``source``, the identity latent: ``normalize(embedding) @ emap``, normalised, where
``emap`` (512 x 512) is the graph's last initializer. Output: the swapped 128 crop, RGB
in 0..1. Input dtypes are read from the session (an fp16 export may keep float32 I/O or
not), and every output face is checked: fp16 models are known to return black or NaN
faces with some onnxruntime versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import numpy_helper

from pixelbus.faceswap_worker.engines.base import RGBImage
from pixelbus.faceswap_worker.engines.errors import BadModelOutput
from pixelbus.faceswap_worker.engines.sessions import input_dtype

__all__ = ["InswapperModel", "check_face_output", "read_emap"]

_BLACK = 2.0 / 255  # a face whose brightest value is below this is black


def read_emap(path: Path) -> NDArray[np.float32]:
    """The graph's last initializer, which must be 512 x 512 (the embedding map)."""
    model = onnx.load(str(path), load_external_data=False)
    if not model.graph.initializer:
        raise ValueError(f"{path.name} has no initializers, so no emap")
    emap = numpy_helper.to_array(model.graph.initializer[-1]).astype(np.float32)
    if emap.ndim != 2 or emap.shape[0] != emap.shape[1]:
        raise ValueError(f"{path.name}: the last initializer is {emap.shape}, not an emap")
    return emap


def check_face_output(face: NDArray[np.floating], model: str) -> None:
    if not np.isfinite(face).all():
        raise BadModelOutput(model, "NaN or infinite values")
    if float(np.max(face)) < _BLACK:
        raise BadModelOutput(model, "a black image")


class InswapperModel:
    def __init__(self, name: str, session: ort.InferenceSession, emap: NDArray[np.float32]) -> None:
        self.name = name
        self._session = session
        names = {i.name for i in session.get_inputs()}
        if names != {"target", "source"}:
            raise ValueError(f"{name}: expected inputs target and source, got {sorted(names)}")
        self._target_dtype = input_dtype(session, "target")
        self._source_dtype = input_dtype(session, "source")
        self._output_name = session.get_outputs()[0].name
        self.size = (
            int(session.get_inputs()[0].shape[2])
            if isinstance(session.get_inputs()[0].shape[2], int)
            else 128
        )
        self._emap = emap

    def latent(self, embedding: NDArray[np.float32]) -> NDArray[np.float32]:
        """The ``source`` input for a raw ArcFace embedding."""
        normed = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        latent = normed.reshape(1, -1) @ self._emap
        return (latent / max(float(np.linalg.norm(latent)), 1e-12)).astype(np.float32)

    def swap(self, aligned: RGBImage, latent: NDArray[np.float32]) -> RGBImage:
        """The swapped crop for an aligned target crop (RGB uint8, size x size)."""
        blob = (aligned.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        (output,) = self._session.run(
            [self._output_name],
            {
                "target": blob.astype(self._target_dtype),
                "source": latent.astype(self._source_dtype),
            },
        )
        face = np.asarray(output, dtype=np.float32)[0].transpose(1, 2, 0)
        check_face_output(face, self.name)
        return np.asarray(np.clip(np.rint(face * 255.0), 0, 255), dtype=np.uint8)
