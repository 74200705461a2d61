"""Decoding untrusted image bytes into RGB arrays, resizing and encoding them.

Only JPEG, PNG and WebP are opened (GIF, BMP, TIFF and everything else are refused);
the byte count is checked first and the pixel count from the header before the pixels are
decoded; Pillow's ``DecompressionBombWarning`` is an error; truncated files are refused;
EXIF orientation is applied so that arrays are upright; CMYK, 16-bit, palette and alpha
images become RGB (transparency composed onto white). Animated inputs (animated WebP,
APNG) are decoded to their first frame or refused, as ``animated`` says: a service reads
it from ``PIXELBUS_ANIMATED_INPUTS`` (``refuse`` or ``first_frame``, the default) with
``animated_inputs_from``. Encoded outputs are written from the pixels alone, so no
metadata of the input (EXIF, ICC, text chunks, appended data) survives.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Literal, TypeAlias, get_args

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelbus.media.errors import InvalidImage

__all__ = [
    "ACCEPTED_FORMATS",
    "ANIMATED_INPUTS_ENV",
    "AnimatedInputs",
    "EncodeFormat",
    "RGBImage",
    "animated_inputs_from",
    "decode_image",
    "encode_image",
    "fit_within",
]

RGBImage: TypeAlias = NDArray[np.uint8]
"""An HxWx3 uint8 array in RGB order."""

EncodeFormat: TypeAlias = Literal["png", "jpeg", "webp"]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

#: A progressive JPEG's decoding costs a pass over every block per scan, and a scan can
#: take a few bytes: a small file with thousands of scans is a CPU bomb that no pixel
#: limit sees. Encoders write about 10; libjpeg's own tools suggest a limit of 100.
MAX_JPEG_SCANS = 100

AnimatedInputs: TypeAlias = Literal["first_frame", "refuse"]
"""What ``decode_image`` does with an animated input: decode its first frame only
(the default: a moving avatar still works, at the cost of one frame), or refuse it."""

ANIMATED_INPUTS_ENV = "PIXELBUS_ANIMATED_INPUTS"


def animated_inputs_from(environ: Mapping[str, str]) -> AnimatedInputs:
    """The ``PIXELBUS_ANIMATED_INPUTS`` setting of ``environ`` (``first_frame`` when unset).

    Raises ValueError for any other value, so that a service refuses to start with it."""
    value = environ.get(ANIMATED_INPUTS_ENV, "first_frame").strip().lower() or "first_frame"
    for choice in get_args(AnimatedInputs):
        if value == choice:
            return choice  # type: ignore[no-any-return]
    raise ValueError(f"{ANIMATED_INPUTS_ENV} must be refuse or first_frame, not {value!r}")


# Recognised only to say what a refused body is; never decoded.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x00\x00\x01\x00", "an ICO image"),
    (4, b"ftypavif", "an AVIF image"),
    (4, b"ftyphei", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    content_type: str | None = None,
    animated: AnimatedInputs = "first_frame",
) -> RGBImage:
    """Decode JPEG, PNG or WebP bytes into an upright RGB array.

    ``content_type`` (the server's claim) only improves error messages. Transparent
    pixels are composed onto white; an animated image gives its first frame or is
    refused, as ``animated`` says. Raises InvalidImage for anything else."""
    if animated not in get_args(AnimatedInputs):
        raise ValueError(f"animated must be refuse or first_frame, not {animated!r}")
    if not data:
        raise InvalidImage("not an image: the body is empty")
    if len(data) > max_bytes:
        raise InvalidImage(f"image too large: {len(data)} bytes exceeds {max_bytes} bytes")
    # Turns Pillow's own bomb warning into an error (filters are process-wide; a race
    # between threads can only leave this error filter in place, which is harmless).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                _check_header(image, max_pixels)
                _check_jpeg_scans(image, data)
                _check_animation(image, animated)
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
        except UnidentifiedImageError:
            raise InvalidImage(_not_an_image(data, content_type)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise InvalidImage(f"image too large: {error}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise InvalidImage(f"corrupt or truncated image: {error}") from None


def _check_header(image: Image.Image, max_pixels: int) -> None:
    if image.format not in ACCEPTED_FORMATS:  # formats= already limits this; be explicit
        raise InvalidImage(f"not an accepted image: {image.format} (accepted: JPEG, PNG, WEBP)")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels: {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image too large: {width}x{height} pixels exceeds {_megapixels(max_pixels)}"
        )


def _check_jpeg_scans(image: Image.Image, data: bytes) -> None:
    # Entropy-coded data stuffs every 0xFF with 0x00, so FF DA only starts a scan (or a
    # scan of an embedded thumbnail, which makes this count err on the safe side).
    if image.format == "JPEG" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise InvalidImage(
            f"image refused: a JPEG with {scans} scans (at most {MAX_JPEG_SCANS}), "
            "which would take long to decode"
        )


def _check_animation(image: Image.Image, animated: AnimatedInputs) -> None:
    if animated == "refuse" and getattr(image, "is_animated", False):
        frames = getattr(image, "n_frames", "several")
        raise InvalidImage(
            f"animated images are not accepted: this {image.format} has {frames} frames"
        )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g} megapixels"


def _to_rgb(image: Image.Image) -> RGBImage:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the high byte
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


# The accepted formats' own signatures: a body that starts with one is a damaged image.
_ACCEPTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (8, b"WEBP", "WEBP"),
)


def _not_an_image(data: bytes, content_type: str | None) -> str:
    claimed = f" (served as {content_type})" if content_type else ""
    head = data[:16]
    for offset, signature, name in _ACCEPTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return f"corrupt or truncated image: a {name} signature, but no valid {name} header"
    for offset, signature, kind in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return f"not an accepted image: the body is {kind}{claimed} (accepted: JPEG, PNG, WEBP)"
    return f"not an image: the body is {_sniff_text(data[:512])}{claimed}"


def _sniff_text(head: bytes) -> str:
    try:
        text = head.decode("utf-8").lstrip("\ufeff \t\r\n").lower()
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if text.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "text/html"
    if "<svg" in text:
        return "an SVG image, which is not accepted"
    if text.startswith("<"):
        return "XML or HTML text"
    if text.startswith(("{", "[")):
        return "JSON text"
    return "text" if text.isprintable() or not text else "unrecognised data"


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
