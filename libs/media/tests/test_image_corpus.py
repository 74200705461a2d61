"""A hostile image corpus, generated here: every case is refused with a clear error or
normalised to a plain RGB array, each within a small memory bound (how long each case
takes is a benchmark's business, not a test's: a busy machine would fail a time bound).

Memory is measured twice: ``tracemalloc`` (Python and numpy allocations) and the growth
of the process's peak resident set (Pillow's own C allocations, which tracemalloc does
not see; Linux only, reset per case through ``/proc/self/clear_refs``). Run with ``-s``
to see the figures of each case.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelbus.media import (
    ANIMATED_INPUTS_ENV,
    InvalidImage,
    animated_inputs_from,
    decode_image,
    encode_image,
)
from pixelbus.media.arrays import RGBImage
from pixelbus.media.images import AnimatedInputs

MAX_BYTES = 10_000_000
MAX_PIXELS = 16_000_000
MEMORY_BOUND = 64 * 1024 * 1024


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    width: int,
    height: int,
    *,
    depth: int = 8,
    colour: int = 2,
    idat: bytes | None = None,
    before_idat: bytes = b"",
) -> bytes:
    """A PNG written by hand, so that its header may lie about its data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    if idat is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        row = b"\x00" + bytes(width * channels * depth // 8)
        idat = zlib.compress(row * height)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + before_idat
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def saved(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A gradient, so that rotations and frames can be told apart."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None].repeat(size[0], 1)
    rgb = np.stack([x, y, np.full_like(x, 90)], axis=2)
    return Image.fromarray(rgb).convert(mode)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(saved(photo(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(side: int) -> bytes:
    data = bytearray(saved(photo(), "WEBP", lossless=False))
    assert data[12:16] == b"VP8 "
    start = data.index(b"\x9d\x01\x2a", 20)
    data[start + 3 : start + 7] = struct.pack("<HH", side, side)
    return bytes(data)


def frames(format: str, colours: list[tuple[int, int, int]], **options: object) -> bytes:
    images = [Image.new("RGB", (32, 32), colour) for colour in colours]
    return saved(images[0], format, save_all=True, append_images=images[1:], **options)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def scan_bomb() -> bytes:
    """A progressive JPEG whose last scan is repeated 500 times: every scan is a pass
    over all blocks, so decoding time grows with scans that cost a few bytes each."""
    data = saved(photo(size=(256, 256)), "JPEG", progressive=True)
    last = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + last * 500 + data[-2:]


def ztxt_bomb() -> bytes:
    text = b"Comment\x00\x00" + zlib.compress(b"A" * 64_000_000, 9)
    return png(8, 8, before_idat=chunk(b"zTXt", text))


def idat_bomb() -> bytes:
    """A 256x256 PNG whose IDAT inflates to 64 MB, far beyond the 196 kB it needs."""
    return png(256, 256, idat=zlib.compress(bytes(64_000_000), 9))


def bad_crc() -> bytes:
    data = bytearray(png(8, 8))
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    exif[0x010F] = "Camera maker"
    return saved(photo(), "JPEG", quality=95, exif=exif)


PAYLOAD = b"<script>alert(document.domain)</script><?php system($_GET['c']); ?>"


def png_with_appended_zip() -> bytes:
    archive = b"PK\x03\x04" + PAYLOAD + b"PK\x05\x06" + bytes(18)
    return saved(photo(), "PNG") + archive


def jpeg_with_script_comment() -> bytes:
    data = saved(photo(), "JPEG", quality=90)
    comment = b"\xff\xfe" + struct.pack(">H", len(PAYLOAD) + 2) + PAYLOAD
    return data[:2] + comment + data[2:]


def png_with_text_chunk() -> bytes:
    text = chunk(b"tEXt", b"Comment\x00" + PAYLOAD)
    data = saved(photo(), "PNG")
    return data[:33] + text + data[33:]  # after the signature and IHDR


def palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    return saved(image, "PNG", transparency=0)


def sixteen_bit_rgb() -> bytes:
    row = b"\x00" + struct.pack(">HHH", 0xFF00, 0x8000, 0x0100) * 4
    return png(4, 4, depth=16, colour=2, idat=zlib.compress(row * 4))


Check = Callable[[RGBImage], None]


def colour(expected: tuple[int, int, int], tolerance: int = 6) -> Check:
    def check(image: RGBImage) -> None:
        got = image[image.shape[0] // 2, image.shape[1] // 2].astype(int)
        assert np.abs(got - np.array(expected)).max() <= tolerance, got

    return check


def shape(rows: int, cols: int) -> Check:
    def check(image: RGBImage) -> None:
        assert image.shape == (rows, cols, 3)

    return check


def both(*checks: Check) -> Check:
    def check(image: RGBImage) -> None:
        for each in checks:
            each(image)

    return check


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], bytes]
    refused: str | None = None
    """A part of the InvalidImage message; None when the image must be normalised."""
    check: Check | None = None
    animated: AnimatedInputs = "first_frame"


CORPUS: list[Case] = [
    # decompression bombs: small files, huge declared sizes
    Case("PNG header 100000x100000", lambda: png(100_000, 100_000, idat=b""), "image too large"),
    Case("PNG header 5000x5000", lambda: png(5000, 5000, idat=b""), "exceeds 16 megapixels"),
    Case("JPEG SOF 65000x65000", lambda: jpeg_claiming(65_000, 65_000), "image too large"),
    Case("WEBP frame 16383x16383", lambda: webp_claiming(16_383), "image too large"),
    Case("JPEG with 510 progressive scans", scan_bomb, "a JPEG with 510 scans (at most 100)"),
    Case("progressive JPEG", lambda: saved(photo(), "JPEG", progressive=True), None, shape(48, 64)),
    Case("PNG zTXt inflating to 64 MB", ztxt_bomb, "corrupt or truncated image"),
    Case("PNG IDAT inflating to 64 MB", idat_bomb, None, shape(256, 256)),
    Case("over the byte limit", lambda: bytes(MAX_BYTES + 1), "exceeds 10000000 bytes"),
    # truncated and corrupt
    Case("truncated PNG", lambda: half(saved(photo(), "PNG")), "truncated"),
    Case("truncated JPEG", lambda: half(saved(photo(), "JPEG")), "truncated"),
    Case("truncated WEBP", lambda: half(saved(photo(), "WEBP")), "image"),
    Case("PNG with a bad CRC", bad_crc, "a PNG signature, but no valid PNG header"),
    Case("PNG of 0x0 pixels", lambda: png(0, 0, idat=b""), "image"),
    Case(
        "PNG signature over HTML", lambda: b"\x89PNG\r\n\x1a\n<html></html>", "no valid PNG header"
    ),
    Case("empty", lambda: b"", "the body is empty"),
    # formats outside the allowlist
    Case("GIF", lambda: saved(photo(), "GIF"), "a GIF image"),
    Case("animated GIF", lambda: frames("GIF", [(255, 0, 0), (0, 255, 0)]), "a GIF image"),
    Case("BMP", lambda: saved(photo(), "BMP"), "a BMP image"),
    Case("TIFF", lambda: saved(photo(), "TIFF"), "a TIFF image"),
    Case("SVG", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    Case("GIF/JavaScript polyglot", lambda: b"GIF89a/*\x00\x00*/=alert(1);", "a GIF image"),
    # animated inputs, as the setting says
    Case(
        "animated WEBP, refuse",
        lambda: frames("WEBP", [(255, 0, 0), (0, 0, 255)], lossless=True),
        "animated images are not accepted: this WEBP has 2 frames",
        animated="refuse",
    ),
    Case(
        "APNG, refuse",
        lambda: frames("PNG", [(255, 0, 0), (0, 0, 255)]),
        "this PNG has 2 frames",
        animated="refuse",
    ),
    Case(
        "animated WEBP, first frame",
        lambda: frames("WEBP", [(255, 0, 0), (0, 0, 255)], lossless=True),
        None,
        colour((255, 0, 0), 0),
    ),
    Case(
        "APNG, first frame",
        lambda: frames("PNG", [(255, 0, 0), (0, 0, 255)]),
        None,
        colour((255, 0, 0), 0),
    ),
    # odd modes, normalised to RGB
    Case(
        "CMYK JPEG",
        lambda: saved(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        None,
        colour((255, 0, 0), 8),
    ),
    Case(
        "16-bit grey PNG",
        lambda: saved(Image.fromarray(np.full((4, 4), 0xABCD, np.uint16)), "PNG"),
        None,
        colour((0xAB, 0xAB, 0xAB), 0),
    ),
    Case("16-bit RGB PNG", sixteen_bit_rgb, None, colour((0xFF, 0x80, 0x01), 0)),
    Case(
        "palette PNG with transparency",
        palette_with_transparency,
        None,
        both(lambda image: colour((0, 0, 255), 0)(image[:, :4]), colour((255, 255, 255), 0)),
    ),
    Case(
        "grey+alpha PNG",
        lambda: saved(Image.new("LA", (4, 4), (0, 0)), "PNG"),
        None,
        colour((255, 255, 255), 0),
    ),
    Case(
        "RGBA WEBP",
        lambda: saved(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "WEBP", lossless=True),
        None,
        colour((255, 255, 255), 0),
    ),
    Case(
        "1-bit PNG",
        lambda: saved(Image.new("1", (4, 4), 1), "PNG"),
        None,
        colour((255, 255, 255), 0),
    ),
    Case(
        "grey JPEG",
        lambda: saved(Image.new("L", (8, 8), 128), "JPEG"),
        None,
        colour((128, 128, 128), 2),
    ),
    Case("EXIF orientation 6", exif_rotated, None, shape(64, 48)),
    # polyglots and metadata: the pixels survive, nothing else does
    Case("PNG with a ZIP appended", png_with_appended_zip, None, shape(48, 64)),
    Case("JPEG with a script in a comment", jpeg_with_script_comment, None, shape(48, 64)),
    Case("PNG with a script in a tEXt chunk", png_with_text_chunk, None, shape(48, 64)),
]


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Measured:
    traced_peak: int
    rss_growth: int | None


def measured(run: Callable[[], object]) -> tuple[object, Measured]:
    """Run ``run`` once, returning its result or the InvalidImage it raised."""
    rss_tracked = _reset_peak_rss()
    rss_before = _status_kib("VmRSS") if rss_tracked else 0
    already_tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        outcome: object = run()
    except InvalidImage as error:
        outcome = error
    finally:
        traced_peak = tracemalloc.get_traced_memory()[1]
        if not already_tracing:
            tracemalloc.stop()
    growth = max(0, _status_kib("VmHWM") - rss_before) * 1024 if rss_tracked else None
    return outcome, Measured(traced_peak, growth)


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus_case(case: Case) -> None:
    data = case.make()

    def run() -> tuple[RGBImage, bytes]:
        image = decode_image(
            data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, animated=case.animated
        )
        return image, encode_image(image, "png")

    outcome, cost = measured(run)
    rss = "n/a" if cost.rss_growth is None else f"{cost.rss_growth / 2**20:.1f} MiB"
    verdict = str(outcome) if isinstance(outcome, InvalidImage) else "normalised"
    print(
        f"\n{case.name:34} {len(data):>9} B  "
        f"traced {cost.traced_peak / 2**20:5.1f} MiB  peak RSS +{rss}  {verdict}"
    )
    assert cost.traced_peak < MEMORY_BOUND
    assert cost.rss_growth is None or cost.rss_growth < MEMORY_BOUND
    if case.refused is not None:
        assert isinstance(outcome, InvalidImage), f"not refused: {outcome!r}"
        assert case.refused in str(outcome)
        assert outcome.code == "invalid_image" and outcome.retryable is False
        return
    assert not isinstance(outcome, InvalidImage), f"refused: {outcome}"
    image, encoded = outcome  # type: ignore[misc]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert case.check is not None
    case.check(image)
    # Re-encoded from the pixels only: no payload, text, EXIF or trailing data survives.
    assert PAYLOAD not in encoded and b"Camera maker" not in encoded
    reopened = Image.open(io.BytesIO(encoded))
    assert reopened.format == "PNG" and reopened.mode == "RGB"
    assert dict(reopened.getexif()) == {} and not reopened.text  # type: ignore[attr-defined]
    assert encoded.endswith(chunk(b"IEND", b""))


def test_the_exif_rotation_is_applied() -> None:
    upright = decode_image(exif_rotated(), max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    expected = np.rot90(np.asarray(photo()), k=-1)
    assert np.abs(upright.astype(int) - expected).mean() < 4


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({}, "first_frame"),
        ({ANIMATED_INPUTS_ENV: "refuse"}, "refuse"),
        ({ANIMATED_INPUTS_ENV: " First_Frame "}, "first_frame"),
        ({ANIMATED_INPUTS_ENV: ""}, "first_frame"),
    ],
)
def test_animated_inputs_setting(environ: dict[str, str], setting: str) -> None:
    assert animated_inputs_from(environ) == setting


def test_animated_inputs_setting_refuses_other_values() -> None:
    with pytest.raises(ValueError, match="must be refuse or first_frame, not 'all'"):
        animated_inputs_from({ANIMATED_INPUTS_ENV: "all"})
    with pytest.raises(ValueError, match="animated must be"):
        decode_image(saved(photo(), "PNG"), max_bytes=10**6, max_pixels=10**6, animated="x")  # type: ignore[arg-type]
