"""An optional face enhancer (GFPGAN-style ONNX: ``input`` 1x3x512x512 RGB in -1..1,
``output`` the same) run on each swapped face and blended over it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.alignment import (
    FFHQ_TEMPLATE,
    similarity_transform,
    warp_face,
)
from pixelbus.faceswap_worker.engines.base import RGBImage
from pixelbus.faceswap_worker.engines.pasteback import paste_back, soft_mask
from pixelbus.faceswap_worker.engines.sessions import input_dtype
from pixelbus.faceswap_worker.engines.swapper import check_face_output

__all__ = ["FaceEnhancer"]


class FaceEnhancer:
    def __init__(self, name: str, session: ort.InferenceSession) -> None:
        self.name = name
        self._session = session
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._dtype = input_dtype(session, model_input.name)
        side = model_input.shape[2]
        self.size = side if isinstance(side, int) and side > 0 else 512
        self._output_name = session.get_outputs()[0].name
        self._mask = soft_mask(self.size, erode_fraction=0.08, blur_fraction=0.12)

    def enhance(self, frame: RGBImage, keypoints: NDArray[np.float32], blend: float) -> RGBImage:
        """``frame`` with the face at ``keypoints`` enhanced, mixed in at ``blend``."""
        if blend <= 0:
            return frame
        matrix = similarity_transform(keypoints, FFHQ_TEMPLATE * self.size)
        crop = warp_face(frame, matrix, self.size)
        blob = ((crop.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        (output,) = self._session.run(
            [self._output_name], {self._input_name: blob.astype(self._dtype)}
        )
        face = (np.asarray(output, dtype=np.float32)[0].transpose(1, 2, 0) + 1.0) / 2.0
        check_face_output(face, self.name)
        enhanced = np.clip(np.rint(face * 255.0), 0, 255).astype(np.uint8)
        return paste_back(frame, enhanced, matrix, self._mask, opacity=blend)
