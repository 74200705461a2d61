"""Small test videos built in memory from real photos (no video files in the repository).

The photos ship in PyPI packages the tests install anyway: scikit-image's astronaut and
coffee, matplotlib's Grace Hopper, insightface's group of six. Each builder is
deterministic (same arguments, same frames and pts) and fast: keep videos small
(e.g. 256x256 or 320x240, 1-2 s at 25 fps). MP4s are H.264 with B-frames (as phones write
them) and AAC; WebMs are VP9 and Opus. ``size`` is always the upright (displayed) size:
a video with a display rotation of ±90 degrees stores its frames the other way round.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeAlias

import av
import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "RGBImage",
    "crossing_video",
    "data_uri",
    "face_crops",
    "face_swap_body",
    "frame_times",
    "pan_video",
    "photos",
    "png_bytes",
    "zoom_video",
]

RGBImage: TypeAlias = NDArray[np.uint8]
Format: TypeAlias = Literal["mp4", "webm", "mov", "mkv"]

AUDIO_RATE = 48_000
#: a variable frame rate: frame durations in units of one nominal frame, repeated
VFR_PATTERN = (
    Fraction(1),
    Fraction(1, 2),
    Fraction(3, 2),
    Fraction(1),
    Fraction(3, 4),
    Fraction(5, 4),
)

#: where each photo's face is (left, top, right, bottom), generously
FACE_BOXES = {
    "astronaut": (150, 20, 330, 230),
    "hopper": (120, 60, 400, 400),
}


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


@cache
def _photo(package: str, *parts: str) -> RGBImage:
    with Image.open(_package_file(package, *parts)) as image:
        array = np.array(image.convert("RGB"), dtype=np.uint8)
    array.setflags(write=False)
    return array


def photos() -> dict[str, RGBImage]:
    """Real photos (read-only arrays): ``astronaut``, ``hopper`` (one face each),
    ``group`` (six faces) and ``coffee`` (no face)."""
    return {
        "astronaut": _photo("skimage", "data", "astronaut.png"),
        "hopper": _photo("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "group": _photo("insightface", "data", "images", "t1.jpg"),
        "coffee": _photo("skimage", "data", "coffee.png"),
    }


def png_bytes(image: RGBImage) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str) -> str:
    """``data`` as a ``data:`` URI: a file handed to the API without a server to fetch it."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def face_swap_body(target_uri: str, source: str = "astronaut", **options: Any) -> dict[str, Any]:
    """A ``POST /api/tasks/create`` body: the face of photo ``source`` onto the target."""
    source_uri = data_uri(png_bytes(photos()[source]), "image/png")
    wf_json = {"source_url": source_uri, "target_url": target_uri, **options}
    return {"workflow": "face_swap", "params": {"input_data": {"wf_json": wf_json}}}


def face_crops() -> dict[str, RGBImage]:
    """The astronaut's and Grace Hopper's faces, cropped with hair and chin."""
    found = photos()
    return {
        name: found[name][top:bottom, left:right]
        for name, (left, top, right, bottom) in FACE_BOXES.items()
    }


def frame_times(seconds: float, fps: int, *, vfr: bool = False) -> list[Fraction]:
    """The presentation times of the frames a builder writes: every 1/fps, or with
    ``vfr`` durations cycling through ``VFR_PATTERN`` (the same length in all)."""
    step = Fraction(1, fps)
    times: list[Fraction] = []
    now = Fraction(0)
    while now < Fraction(seconds) - step / 4:
        times.append(now)
        now += step * (VFR_PATTERN[len(times) % len(VFR_PATTERN)] if vfr else 1)
    return times


def _resize(image: RGBImage, size: tuple[int, int]) -> RGBImage:
    picture = Image.fromarray(np.ascontiguousarray(image))
    return np.array(picture.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def _window(photo: RGBImage, size: tuple[int, int], fraction: float) -> tuple[int, int]:
    """The largest crop of ``size``'s aspect ratio covering ``fraction`` of the photo."""
    rows, cols = photo.shape[:2]
    width, height = size
    scale = min(cols / width, rows / height) * fraction
    return max(1, round(width * scale)), max(1, round(height * scale))


def pan_video(
    photo: RGBImage,
    *,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    output_format: Format = "mp4",
    audio_hz: float | None = 440.0,
    rotation: int = 0,
    vfr: bool = False,
    gop: int | None = None,
) -> bytes:
    """A window of 85% of the photo moving slowly from its left to its right edge (a face
    in the middle stays in view), ``size`` (width, height) upright."""
    crop_w, crop_h = _window(photo, size, 0.85)
    rows, cols = photo.shape[:2]
    top = (rows - crop_h) // 2

    def draw(progress: float) -> RGBImage:
        left = round((cols - crop_w) * progress)
        return _resize(photo[top : top + crop_h, left : left + crop_w], size)

    return _build(draw, seconds, fps, size, output_format, audio_hz, rotation, vfr, gop)


def zoom_video(
    photo: RGBImage,
    *,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    output_format: Format = "mp4",
    audio_hz: float | None = 440.0,
    rotation: int = 0,
    vfr: bool = False,
    gop: int | None = None,
) -> bytes:
    """A window closing in on the photo's centre, from all of it to 60% of it."""
    rows, cols = photo.shape[:2]

    def draw(progress: float) -> RGBImage:
        crop_w, crop_h = _window(photo, size, 1.0 - 0.4 * progress)
        left, top = (cols - crop_w) // 2, (rows - crop_h) // 2
        return _resize(photo[top : top + crop_h, left : left + crop_w], size)

    return _build(draw, seconds, fps, size, output_format, audio_hz, rotation, vfr, gop)


def crossing_video(
    left: RGBImage,
    right: RGBImage,
    *,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    output_format: Format = "mp4",
    audio_hz: float | None = 440.0,
    rotation: int = 0,
    vfr: bool = False,
    gop: int | None = None,
) -> bytes:
    """Two faces (e.g. from ``face_crops``) crossing on a grey ground: ``left`` goes from
    the left edge to the right along the upper half, ``right`` the other way along the
    lower half, so that they pass each other half-way without covering each other."""
    width, height = size
    side = max(8, min(height // 2 - 4, width // 3))
    sprites = [_resize(face, (side, side)) for face in (left, right)]
    lanes = (height // 4 - side // 2, 3 * height // 4 - side // 2)
    lanes = tuple(min(max(0, lane), height - side) for lane in lanes)  # type: ignore[assignment]

    def draw(progress: float) -> RGBImage:
        canvas = np.full((height, width, 3), 96, dtype=np.uint8)
        travel = width - side
        for sprite, lane, x in zip(
            sprites,
            lanes,
            (round(travel * progress), round(travel * (1 - progress))),
            strict=True,
        ):
            canvas[lane : lane + side, x : x + side] = sprite
        return canvas

    return _build(draw, seconds, fps, size, output_format, audio_hz, rotation, vfr, gop)


# --- writing --------------------------------------------------------------------------

_FORMATS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska"}


def _build(
    draw: Callable[[float], RGBImage],
    seconds: float,
    fps: int,
    size: tuple[int, int],
    output_format: Format,
    audio_hz: float | None,
    rotation: int,
    vfr: bool,
    gop: int | None,
) -> bytes:
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, not {rotation}")
    times = frame_times(seconds, fps, vfr=vfr)
    vp9 = output_format in ("webm", "mkv")
    # Matroska counts milliseconds; MP4 a 512th of a frame, as FFmpeg would
    time_base = Fraction(1, 1000) if vp9 else Fraction(1, fps * 512)
    turns = (-(rotation // 90)) % 4
    width, height = size if turns % 2 == 0 else (size[1], size[0])
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_FORMATS[output_format]) as output:
        if vp9:
            options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}
            video = output.add_stream("libvpx-vp9", rate=fps, options=options)
        else:
            options = {"preset": "veryfast", "crf": "18", "threads": "1"}
            video = output.add_stream("libx264", rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.codec_context.thread_count = 1
        if gop is not None:
            video.codec_context.gop_size = gop
        if rotation % 360:
            video.set_display_rotation(rotation)
        audio: av.audio.stream.AudioStream | None = None
        if audio_hz is not None:
            codec = "libopus" if vp9 else "aac"
            added = output.add_stream(codec, rate=AUDIO_RATE, layout="mono")
            assert isinstance(added, av.audio.stream.AudioStream)
            audio = added
            audio.codec_context.thread_count = 1
        tone = _tone(audio_hz or 0.0, seconds) if audio is not None else iter(())
        end = Fraction(seconds)
        for index, time in enumerate(times):
            upright = draw(index / max(1, len(times) - 1))
            stored = np.ascontiguousarray(np.rot90(upright, turns)) if turns else upright
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = round(time / time_base)
            frame.time_base = time_base
            output.mux(video.encode(frame))
            if audio is not None:
                following = times[index + 1] if index + 1 < len(times) else end
                for piece in _take(tone, following):
                    output.mux(audio.encode(piece))
        output.mux(video.encode(None))
        if audio is not None:
            for piece in tone:
                output.mux(audio.encode(piece))
            output.mux(audio.encode(None))
    return buffer.getvalue()


_CHUNK = 960  # 20 ms at 48 kHz


def _tone(hz: float, seconds: float) -> Iterator[av.AudioFrame]:
    """A sine tone at a fifth of full scale, in 20 ms frames, ``seconds`` long."""
    total = round(seconds * AUDIO_RATE)
    for start in range(0, total, _CHUNK):
        count = min(_CHUNK, total - start)
        samples = np.arange(start, start + count, dtype=np.float64)
        wave = (0.2 * np.sin(2 * math.pi * hz * samples / AUDIO_RATE)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        yield frame


def _take(tone: Iterator[av.AudioFrame], until: Fraction) -> Iterator[av.AudioFrame]:
    """Frames of ``tone`` that start before ``until`` seconds (one more may be read)."""
    limit = until * AUDIO_RATE
    for frame in tone:
        yield frame
        if frame.pts is not None and frame.pts + frame.samples >= limit:
            return
