"""ArcFace identity embedding (InsightFace's ``w600k_r50``) on onnxruntime: the face is
aligned to the 112x112 ArcFace template, normalised to (x - 127.5) / 127.5 in RGB."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.alignment import (
    arcface_template,
    similarity_transform,
    warp_face,
)
from pixelbus.faceswap_worker.engines.base import RGBImage
from pixelbus.faceswap_worker.engines.sessions import input_dtype

__all__ = ["ArcFaceEmbedder"]


class ArcFaceEmbedder:
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._dtype = input_dtype(session, model_input.name)
        side = model_input.shape[2]
        self.size = side if isinstance(side, int) and side > 0 else 112
        self._output_name = session.get_outputs()[0].name

    def embed(self, image: RGBImage, keypoints: NDArray[np.float32]) -> NDArray[np.float32]:
        """The face's raw (not normalised) embedding."""
        matrix = similarity_transform(keypoints, arcface_template(self.size))
        crop = warp_face(image, matrix, self.size)
        blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        (embedding,) = self._session.run(
            [self._output_name], {self._input_name: blob.astype(self._dtype)}
        )
        return np.asarray(embedding, dtype=np.float32).reshape(-1)
