"""Untrusted image bytes as RGB arrays; arrays resized and encoded (needs numpy).

``decode_image`` opens the bytes with the bounds of ``images.open_image`` and returns an
upright HxWx3 uint8 array: CMYK, 16-bit, palette and alpha images become RGB
(transparency composed onto white). Encoded outputs are written from the pixels alone, so
no metadata of the input (EXIF, ICC, text chunks, appended data) survives. numpy comes
with the ``arrays`` extra of pixelbus-media, which the face-swap worker installs.
"""

from __future__ import annotations

import io
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pixelbus.media.images import AnimatedInputs, open_image

__all__ = ["EncodeFormat", "RGBImage", "decode_image", "encode_image", "fit_within"]

RGBImage: TypeAlias = NDArray[np.uint8]
"""An HxWx3 uint8 array in RGB order."""

EncodeFormat: TypeAlias = Literal["png", "jpeg", "webp"]


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    content_type: str | None = None,
    animated: AnimatedInputs = "first_frame",
) -> RGBImage:
    """Decode JPEG, PNG or WebP bytes into an upright RGB array (see ``open_image``).

    Raises InvalidImage for anything ``open_image`` refuses."""
    image = open_image(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        content_type=content_type,
        animated=animated,
    )
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> RGBImage:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the high byte
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _check_array(image: RGBImage) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"expected an HxWx3 uint8 RGB array, got {image.dtype} with shape {image.shape}"
        )


def fit_within(image: RGBImage, width: int, height: int) -> RGBImage:
    """Shrink ``image`` to fit a ``width`` x ``height`` box, keeping its aspect ratio.

    Never enlarges: an image that already fits is returned as it is (upscaling adds no
    detail, only cost). Uses Lanczos resampling. Raises ValueError for a bad array or box."""
    _check_array(image)
    if width < 1 or height < 1:
        raise ValueError(f"box must be at least 1x1, got {width}x{height}")
    rows, cols = image.shape[:2]
    scale = min(width / cols, height / rows)
    if scale >= 1:
        return image
    size = (max(1, min(width, round(cols * scale))), max(1, min(height, round(rows * scale))))
    resized = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.array(resized, dtype=np.uint8)


def encode_image(image: RGBImage, format: EncodeFormat = "png", quality: int = 90) -> bytes:
    """Encode an RGB array; no metadata (EXIF) is written. ``quality`` (1-100) applies
    to JPEG and WebP. Raises ValueError for a bad array, format or quality."""
    _check_array(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, got {quality}")
    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    if format == "png":
        picture.save(buffer, format="PNG", compress_level=6)
    elif format == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    elif format == "webp":
        picture.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown image format {format!r} (png, jpeg or webp)")
    return buffer.getvalue()
