"""Opening untrusted image bytes with bounds: Pillow only (``arrays`` makes RGB arrays).

Only JPEG, PNG and WebP are opened (GIF, BMP, TIFF and everything else are refused);
the byte count is checked first and the pixel count from the header before the pixels are
decoded; Pillow's ``DecompressionBombWarning`` is an error; truncated files are refused;
EXIF orientation is applied so that images are upright. Animated inputs (animated WebP,
APNG) are decoded to their first frame or refused, as ``animated`` says: a service reads
it from ``PIXELBUS_ANIMATED_INPUTS`` (``refuse`` or ``first_frame``, the default) with
``animated_inputs_from``. This module needs Pillow only, so that a service which only
checks images (the comfy-worker) does not carry numpy; ``pixelbus.media.arrays`` turns
the checked image into an RGB array and encodes arrays.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Literal, TypeAlias, get_args

from PIL import Image, ImageOps, UnidentifiedImageError

from pixelbus.media.errors import InvalidImage

__all__ = [
    "ACCEPTED_FORMATS",
    "ANIMATED_INPUTS_ENV",
    "AnimatedInputs",
    "animated_inputs_from",
    "open_image",
]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

#: A progressive JPEG's decoding costs a pass over every block per scan, and a scan can
#: take a few bytes: a small file with thousands of scans is a CPU bomb that no pixel
#: limit sees. Encoders write about 10; libjpeg's own tools suggest a limit of 100.
MAX_JPEG_SCANS = 100

AnimatedInputs: TypeAlias = Literal["first_frame", "refuse"]
"""What ``open_image`` (and so ``arrays.decode_image``) does with an animated input:
decode its first frame only (the default: a moving avatar still works, at the cost of one
frame), or refuse it."""

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


def open_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    content_type: str | None = None,
    animated: AnimatedInputs = "first_frame",
) -> Image.Image:
    """Decode JPEG, PNG or WebP bytes fully into an upright Pillow image, within bounds.

    ``content_type`` (the server's claim) only improves error messages. An animated
    image gives its first frame or is refused, as ``animated`` says. Raises InvalidImage
    for anything else (too many bytes or pixels, truncated, not an accepted format)."""
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
                return ImageOps.exif_transpose(image)
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
