"""Putting a processed face crop back into the frame: the crop is warped back by the
inverse of its alignment and blended in through a soft mask, eroded away from the crop's
edges and feathered, so that no seam or black border shows. The blend is done in float
and rounded once, so that colours neither wrap around nor drift outside the face."""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.alignment import Matrix
from pixelbus.faceswap_worker.engines.base import RGBImage

__all__ = ["paste_back", "soft_mask"]


def soft_mask(
    size: int, erode_fraction: float = 0.1, blur_fraction: float = 0.1
) -> NDArray[np.float32]:
    """A ``size`` x ``size`` mask in 0..1: zero at the crop's border, eroded by
    ``erode_fraction`` of the side and feathered over ``blur_fraction`` of it."""
    mask = np.zeros((size, size), dtype=np.float32)
    margin = max(1, round(size * erode_fraction))
    mask[margin:-margin, margin:-margin] = 1.0
    kernel = max(3, round(size * blur_fraction)) | 1
    blurred = cv2.GaussianBlur(mask, (kernel, kernel), 0)
    return np.asarray(blurred, dtype=np.float32)


def paste_back(
    frame: RGBImage,
    face: RGBImage,
    matrix: Matrix,
    mask: NDArray[np.float32],
    *,
    opacity: float = 1.0,
) -> RGBImage:
    """``frame`` with ``face`` (the crop ``matrix`` maps the frame onto) blended back in.

    Only the crop's footprint in the frame is touched; ``frame`` itself is not modified."""
    size = face.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    footprint = corners @ inverse.T
    rows, cols = frame.shape[:2]
    x0 = max(0, math.floor(footprint[:, 0].min()) - 1)
    y0 = max(0, math.floor(footprint[:, 1].min()) - 1)
    x1 = min(cols, math.ceil(footprint[:, 0].max()) + 2)
    y1 = min(rows, math.ceil(footprint[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return frame.copy()
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    region = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(
        face, local, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).astype(np.float32)
    alpha = cv2.warpAffine(mask, local, region, flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip(alpha * opacity, 0.0, 1.0)[..., None]
    result = frame.copy()
    background = result[y0:y1, x0:x1].astype(np.float32)
    blended = background + (warped - background) * alpha
    result[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result
