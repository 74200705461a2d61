"""decode_image, fit_within and encode_image with real photos from installed packages."""

from __future__ import annotations

import io
import re
import struct
import zlib
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image

from pixelbus.media import InvalidImage, decode_image, encode_image, fit_within

LIMITS = {"max_bytes": 20_000_000, "max_pixels": 40_000_000}


def astronaut_png() -> bytes:
    return (files("skimage") / "data" / "astronaut.png").read_bytes()


def grace_hopper_jpg() -> bytes:
    return (files("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg").read_bytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``x``height`` but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def saved(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "shape"), [(astronaut_png(), (512, 512, 3)), (grace_hopper_jpg(), (600, 512, 3))]
)
def test_decodes_real_photos(data: bytes, shape: tuple[int, int, int]) -> None:
    image = decode_image(data, **LIMITS)
    assert image.shape == shape
    assert image.dtype == np.uint8
    assert image.flags.writeable
    assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize(("orientation", "quarter_turns"), [(3, 2), (6, -1), (8, 1)])
def test_applies_exif_orientation(orientation: int, quarter_turns: int) -> None:
    photo = Image.open(io.BytesIO(grace_hopper_jpg()))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = saved(photo, "JPEG", quality=95, exif=exif)
    upright = decode_image(data, **LIMITS)
    expected = np.rot90(np.asarray(photo), k=quarter_turns)
    assert upright.shape == expected.shape
    assert np.abs(upright.astype(int) - expected).mean() < 4


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "text/html",
         "not an image: the body is text/html (served as text/html)"),
        (b'{"error": "forbidden"}', None, "not an image: the body is JSON text"),
        (b"\xef\xbb\xbf  <svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml",
         "the body is an SVG image, which is not accepted"),
        (b"", None, "not an image: the body is empty"),
        (b"\x00\x01\x02garbage\xff", None, "unrecognised"),
    ],
)  # fmt: skip
def test_refuses_bodies_that_are_not_images(
    data: bytes, content_type: str | None, message: str
) -> None:
    with pytest.raises(InvalidImage, match=re.escape(message)) as caught:
        decode_image(data, content_type=content_type, **LIMITS)
    assert caught.value.retryable is False
    assert caught.value.code == "invalid_image"


@pytest.mark.parametrize(("format", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_refuses_formats_outside_the_allowlist(format: str, name: str) -> None:
    data = saved(Image.new("RGB", (8, 8), "red"), format)
    with pytest.raises(InvalidImage, match=f"the body is an? {name} image.*accepted: JPEG"):
        decode_image(data, **LIMITS)


def test_refuses_a_pixel_count_over_the_limit_from_the_header() -> None:
    message = "image too large: 9000x9000 pixels exceeds 40 megapixels"
    with pytest.raises(InvalidImage, match=re.escape(message)):
        decode_image(png_header(9000, 9000), **LIMITS)


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_pillow_decompression_bomb_checks_become_errors(side: int) -> None:
    """10000² passes our own limit here but trips Pillow's warning, 30000² its error."""
    with pytest.raises(InvalidImage, match="image too large"):
        decode_image(png_header(side, side), max_bytes=1000, max_pixels=10**10)


@pytest.mark.parametrize("data", [astronaut_png(), grace_hopper_jpg()])
def test_refuses_truncated_images(data: bytes) -> None:
    with pytest.raises(InvalidImage, match="truncated"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_refuses_more_bytes_than_allowed() -> None:
    data = astronaut_png()
    with pytest.raises(InvalidImage, match=f"{len(data)} bytes exceeds 1000 bytes"):
        decode_image(data, max_bytes=1000, max_pixels=10**8)


def test_transparency_is_composed_onto_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (200, 10, 10, 255)
    image = decode_image(saved(Image.fromarray(rgba), "PNG"), **LIMITS)
    assert image[0, 0].tolist() == [200, 10, 10]
    assert image[3, 3].tolist() == [255, 255, 255]


def test_sixteen_bit_grey_keeps_its_high_byte() -> None:
    grey = np.full((4, 4), 0xABCD, dtype=np.uint16)
    image = decode_image(saved(Image.fromarray(grey), "PNG"), **LIMITS)
    assert image[0, 0].tolist() == [0xAB, 0xAB, 0xAB]


def test_fit_within_shrinks_keeping_the_aspect_ratio() -> None:
    photo = decode_image(grace_hopper_jpg(), **LIMITS)
    small = fit_within(photo, 256, 256)
    assert small.shape == (256, 218, 3)
    assert small.dtype == np.uint8
    reference = np.asarray(Image.fromarray(photo).resize((218, 256), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - reference).mean() < 3


def test_fit_within_never_enlarges() -> None:
    photo = decode_image(astronaut_png(), **LIMITS)
    assert fit_within(photo, 2048, 512) is photo


@pytest.mark.parametrize(
    "call",
    [
        lambda: fit_within(np.zeros((4, 4, 3), np.uint8), 0, 10),
        lambda: fit_within(np.zeros((4, 4), np.uint8), 10, 10),
        lambda: encode_image(np.zeros((4, 4, 3), np.float32)),
        lambda: encode_image(np.zeros((4, 4, 3), np.uint8), quality=0),
        lambda: encode_image(np.zeros((4, 4, 3), np.uint8), format="gif"),  # type: ignore[arg-type]
    ],
)
def test_programming_errors_raise_value_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("format", "pillow_name"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_encode_round_trips_without_exif(format: str, pillow_name: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"
    photo = decode_image(
        saved(Image.open(io.BytesIO(grace_hopper_jpg())), "JPEG", exif=exif), **LIMITS
    )
    data = encode_image(photo, format=format, quality=92)  # type: ignore[arg-type]
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == pillow_name
    assert dict(reopened.getexif()) == {}
    again = decode_image(data, **LIMITS)
    assert again.shape == photo.shape
    assert np.abs(again.astype(int) - photo).mean() < 4


def test_quality_trades_size() -> None:
    photo = decode_image(grace_hopper_jpg(), **LIMITS)
    assert len(encode_image(photo, "jpeg", quality=30)) < len(
        encode_image(photo, "jpeg", quality=95)
    )
