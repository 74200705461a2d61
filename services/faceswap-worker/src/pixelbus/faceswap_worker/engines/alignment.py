"""Face alignment by five landmarks (eyes, nose tip, mouth corners): the least-squares
similarity transform (Umeyama) onto a template, and the templates our models expect."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.base import RGBImage

__all__ = [
    "ARCFACE_TEMPLATE",
    "FFHQ_TEMPLATE",
    "Matrix",
    "arcface_template",
    "similarity_transform",
    "warp_face",
]

Matrix = NDArray[np.float64]
"""A 2x3 affine matrix mapping image coordinates to crop coordinates."""

#: The five points of an ArcFace-aligned 112x112 crop (InsightFace's published template).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
#: The five points of an FFHQ-aligned face, as fractions of the crop side (GFPGAN's input).
FFHQ_TEMPLATE = np.array(
    [
        [0.37691676, 0.46864664],
        [0.62285697, 0.46912813],
        [0.50123859, 0.61331904],
        [0.39308822, 0.72541100],
        [0.61150205, 0.72490465],
    ],
    dtype=np.float64,
)


def arcface_template(size: int) -> NDArray[np.float64]:
    """The ArcFace template for a ``size`` crop: 112 multiples scale it; 128 multiples
    scale it by size/128 and shift it right by 8 (the inswapper's 128 crop)."""
    if size % 112 == 0:
        return np.asarray(ARCFACE_TEMPLATE * (size / 112), dtype=np.float64)
    if size % 128 == 0:
        ratio = size / 128
        return np.asarray(ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0]), np.float64)
    raise ValueError(f"ArcFace crops are multiples of 112 or 128 pixels, not {size}")


def similarity_transform(src: NDArray[np.floating], dst: NDArray[np.floating]) -> Matrix:
    """The rotation, uniform scale and translation that best maps ``src`` onto ``dst``
    (both N x 2), in the least-squares sense (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((singular * sign).sum() / variance) if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def warp_face(image: RGBImage, matrix: Matrix, size: int) -> RGBImage:
    """The ``size`` x ``size`` crop that ``matrix`` maps the image onto."""
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return np.asarray(crop, dtype=np.uint8)
