"""Video targets for a face swap fanned out in chunks: probe, decode a range, encode, join.

A video is split by presentation timestamps: ``probe_video`` lists every frame's pts by
demuxing alone (no decoding but the first frame), each worker decodes its range with
``decode_frames`` and writes its swapped frames with ``encode_segment``, and ``assemble``
joins the segments' packets (stream copy: no second encoding) with the original's audio.
Segments keep each frame's original pts and have no B-frames (pts == dts), so that they
join into one stream that plays like the input, variable frame rates included.

Only MP4, MOV, WebM and MKV are opened, recognised by their content (an ISO-BMFF ``ftyp``
box, an EBML header), and FFmpeg is told which demuxer to use, so that no other of its
many demuxers ever reads untrusted bytes. Frames are handed out upright (the display
rotation applied) and written back in the stored orientation with the same rotation.
Codecs run on one thread: each worker process gets one core. PyAV (the ``video`` extra of
pixelbus-media) bundles FFmpeg; every FFmpeg failure becomes an ``InvalidVideo``.
"""

from __future__ import annotations

import heapq
import io
import itertools
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeAlias

import av
import av.error
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.video.stream import VideoStream

from pixelbus.media.arrays import RGBImage
from pixelbus.media.errors import InvalidVideo, VideoTooLarge

__all__ = [
    "Container",
    "VideoFormat",
    "VideoInfo",
    "VideoLimits",
    "assemble",
    "decode_frames",
    "encode_segment",
    "is_video",
    "probe_video",
]

VideoFormat: TypeAlias = Literal["mp4", "webm"]
"""The formats a result is written in."""

Container: TypeAlias = Literal["mp4", "mov", "webm", "mkv"]
"""The containers an input may come in."""

MAX_BYTES_ENV = "PIXELBUS_VIDEO_MAX_BYTES"
MAX_DURATION_ENV = "PIXELBUS_VIDEO_MAX_DURATION_S"
MAX_FRAMES_ENV = "PIXELBUS_VIDEO_MAX_FRAMES"
MAX_PIXELS_ENV = "PIXELBUS_VIDEO_MAX_PIXELS"


@dataclass(frozen=True, slots=True)
class VideoLimits:
    """What ``probe_video`` accepts; a service reads them from its settings."""

    max_bytes: int
    max_duration_s: float
    max_frames: int
    max_pixels: int  # width * height of one frame


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a worker needs to know of a video to split, decode, encode and join it."""

    container: Container  # detected from the content, never from a name
    codec: str  # of the video stream, e.g. "h264", "hevc", "vp9"
    width: int  # as stored (before the display rotation)
    height: int
    rotation: int  # counter-clockwise degrees to turn a stored frame upright (0, ±90, 180)
    time_base: Fraction  # of the video stream
    average_rate: Fraction  # frames per second, on average
    frame_pts: tuple[int, ...]  # every frame's pts in presentation order, in time_base units
    duration_s: float  # of the video stream
    audio_codec: str | None  # None: no audio track

    @property
    def frames(self) -> int:
        return len(self.frame_pts)


# --- recognising a container ----------------------------------------------------------

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE = 0x4282
#: ``ftyp`` brands of still images and audio files: ISO-BMFF too, but not videos
_NOT_VIDEO_BRANDS = frozenset(
    {
        b"avif",
        b"avis",
        b"heic",
        b"heix",
        b"heim",
        b"heis",
        b"hevc",
        b"hevx",
        b"mif1",
        b"msf1",
        b"crx ",
        b"M4A ",
        b"M4B ",
        b"M4P ",
    }
)


def _container_of(data: bytes) -> Container | None:
    """The container that the first bytes announce, or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp" and int.from_bytes(data[:4], "big") >= 12:
        brand = data[8:12]
        if brand in _NOT_VIDEO_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if data[:4] == _EBML_MAGIC:
        doc_type = _ebml_doc_type(data)
        if doc_type == b"webm":
            return "webm"
        if doc_type == b"matroska":
            return "mkv"
    return None


def _ebml_vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``at``: (value, next offset), or None."""
    if at >= len(data) or data[at] == 0:
        return None
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        return None
    value = data[at] if keep_marker else data[at] & (0xFF >> length)
    for byte in data[at + 1 : at + length]:
        value = (value << 8) | byte
    return value, at + length


def _ebml_doc_type(data: bytes) -> bytes | None:
    """The DocType of the EBML header that starts ``data`` (``webm``, ``matroska``)."""
    header = _ebml_vint(data, 0, keep_marker=True)
    size = _ebml_vint(data, 4, keep_marker=False) if header else None
    if size is None:
        return None
    at, end = size[1], min(len(data), size[1] + size[0])
    while at < end:
        element = _ebml_vint(data, at, keep_marker=True)
        length = _ebml_vint(data, element[1], keep_marker=False) if element else None
        if element is None or length is None:
            return None
        start, stop = length[1], length[1] + length[0]
        if element[0] == _EBML_DOCTYPE:
            return data[start:stop].rstrip(b"\x00") if stop <= len(data) else None
        at = stop
    return None


def is_video(data: bytes) -> bool:
    """Whether ``data`` starts like an MP4, MOV, WebM or MKV video (by content only: an
    ISO-BMFF ``ftyp`` box that is not an image's or audio file's, or an EBML header of
    DocType webm or matroska). Cheap: nothing is decoded."""
    return _container_of(data) is not None


# --- probing --------------------------------------------------------------------------

#: FFmpeg's name of the demuxer for each container (told, never guessed)
_DEMUXERS: dict[Container, str] = {
    "mp4": "mov",
    "mov": "mov",
    "webm": "matroska",
    "mkv": "matroska",
}
_AUDIO_SLACK_S = 1.0
_FFMPEG_ERRORS = (av.error.FFmpegError, EOFError, ValueError, OverflowError)


def _open(data: bytes) -> InputContainer:
    container = _container_of(data)
    if container is None:
        raise InvalidVideo("not a video: expected MP4, MOV, WebM or MKV")
    try:
        return av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[container])
    except _FFMPEG_ERRORS as exc:
        raise InvalidVideo("the video is truncated or damaged") from exc


def _video_stream(source: InputContainer) -> VideoStream:
    if not source.streams.video:
        raise InvalidVideo("the file has no video stream")
    stream = source.streams.video[0]
    codec = stream.codec_context
    codec.thread_count = 1
    codec.thread_type = "SLICE"
    return stream


def _rotation(value: float) -> int:
    """A display rotation rounded to a quarter turn, within -90..180."""
    quarter = round(value / 90) % 4
    return (0, 90, 180, -90)[quarter]


def _seconds(text: str, value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + f" {text}"


def probe_video(data: bytes, limits: VideoLimits) -> VideoInfo:
    """What ``data`` holds, within ``limits``: its frames' pts come from demuxing only, its
    rotation from decoding the first frame.

    Raises VideoTooLarge naming the limit passed (its setting's name in brackets) and
    InvalidVideo for anything but a readable MP4, MOV, WebM or MKV with video frames."""
    if len(data) > limits.max_bytes:
        raise VideoTooLarge(
            f"the video is {len(data):,} bytes; at most {limits.max_bytes:,} ({MAX_BYTES_ENV})"
        )
    container = _container_of(data)
    if container is None:
        raise InvalidVideo("not a video: expected MP4, MOV, WebM or MKV")
    with _open(data) as source:
        stream = _video_stream(source)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise InvalidVideo("the video stream has no frame size")
        if width * height > limits.max_pixels:
            raise VideoTooLarge(
                f"the video is {width}x{height} ({width * height:,} pixels); "
                f"at most {limits.max_pixels:,} pixels ({MAX_PIXELS_ENV})"
            )
        if stream.time_base is None:
            raise InvalidVideo("the video stream has no time base")
        time_base = Fraction(stream.time_base)
        header_s = _header_duration(source, stream, time_base)
        _check_duration(header_s, limits)
        pts, last_duration = _demux_pts(source, stream, limits)
        if not pts:
            raise InvalidVideo("the video has no frames")
        if stream.frames and len(pts) < stream.frames:
            raise InvalidVideo("the video is truncated or damaged")
        span_s = float((pts[-1] - pts[0] + last_duration) * time_base)
        _check_duration(span_s, limits)
        rotation = _first_frame_rotation(source, stream)
        # the stream's own duration (MP4), else the frames' span: a container's duration
        # (WebM) counts the audio too
        duration_s = float(stream.duration * time_base) if stream.duration else span_s
        rate = stream.average_rate
        if rate is None or rate <= 0:
            rate = Fraction(len(pts)) / Fraction(span_s) if span_s > 0 else Fraction(25)
        audio = source.streams.audio[0].codec_context.name if source.streams.audio else None
        return VideoInfo(
            container=container,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            rotation=rotation,
            time_base=time_base,
            average_rate=Fraction(rate),
            frame_pts=tuple(pts),
            duration_s=duration_s,
            audio_codec=audio,
        )


def _header_duration(source: InputContainer, stream: VideoStream, tb: Fraction) -> float | None:
    """The duration the headers claim, to refuse a long video before demuxing it: the
    video stream's, else the container's less a second (it counts the audio too, which
    often lasts a few milliseconds longer). The frames' span is checked afterwards."""
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * tb)
    if source.duration is not None and source.duration > 0:
        return source.duration / 1_000_000 - _AUDIO_SLACK_S
    return None


def _check_duration(seconds: float | None, limits: VideoLimits) -> None:
    if seconds is not None and seconds > limits.max_duration_s:
        raise VideoTooLarge(
            f"the video is {_seconds('s', seconds)} long; "
            f"at most {_seconds('s', limits.max_duration_s)} ({MAX_DURATION_ENV})"
        )


def _demux_pts(
    source: InputContainer, stream: VideoStream, limits: VideoLimits
) -> tuple[list[int], int]:
    """Every frame's pts, sorted, and the last frame's duration (from its packet, else
    one average frame), refusing more than ``max_frames`` as soon as they are seen."""
    pts: list[int] = []
    durations: dict[int, int] = {}
    try:
        for packet in source.demux(stream):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.duration:
                durations[packet.pts] = packet.duration
            if len(pts) > limits.max_frames:
                raise VideoTooLarge(
                    f"the video has more than {limits.max_frames:,} frames ({MAX_FRAMES_ENV})"
                )
    except _FFMPEG_ERRORS as exc:
        raise InvalidVideo("the video is truncated or damaged") from exc
    pts.sort()
    if not pts:
        return pts, 0
    last = durations.get(pts[-1])
    if last is None:
        rate = stream.average_rate or stream.guessed_rate
        last = round(1 / (rate * Fraction(stream.time_base or 1))) if rate else 0
    return pts, last


def _first_frame_rotation(source: InputContainer, stream: VideoStream) -> int:
    try:
        source.seek(0, stream=stream, backward=True)
        for frame in source.decode(stream):
            return _rotation(frame.rotation)
    except _FFMPEG_ERRORS as exc:
        raise InvalidVideo("the video cannot be decoded") from exc
    raise InvalidVideo("the video has no decodable frame")


# --- decoding a range -----------------------------------------------------------------


def _upright(image: RGBImage, rotation: int) -> RGBImage:
    """Turn a stored frame by ``rotation`` degrees counter-clockwise (np.rot90's way);
    ``-rotation`` turns it back."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def decode_frames(data: bytes, first_pts: int, last_pts: int) -> Iterator[tuple[int, RGBImage]]:
    """The frames with ``first_pts <= pts <= last_pts`` in presentation order, as upright
    HxWx3 uint8 RGB arrays with their pts.

    Seeks to the keyframe at or before ``first_pts`` and decodes forward, dropping the
    frames before the range; should that keyframe show after ``first_pts`` (B-frames of an
    open GOP), it seeks further back. Raises InvalidVideo when the range cannot be decoded."""
    with _open(data) as source:
        stream = _video_stream(source)
        try:
            frames = _decode_from(source, stream, first_pts)
            for frame in frames:
                pts = frame.pts
                if pts is None or pts < first_pts:
                    continue
                if pts > last_pts:
                    break
                rgb = frame.to_ndarray(format="rgb24")
                yield pts, _upright(rgb, _rotation(frame.rotation))
        except _FFMPEG_ERRORS as exc:
            raise InvalidVideo("a frame of the video cannot be decoded") from exc


def _decode_from(source: InputContainer, stream: VideoStream, first_pts: int) -> Iterator[Any]:
    """Decoded frames from a keyframe that shows at or before ``first_pts``."""
    one_second = max(1, round(1 / Fraction(stream.time_base or Fraction(1, 1000))))
    start = stream.start_time or 0
    target, step = first_pts, one_second
    while True:
        source.seek(target, stream=stream, backward=True)
        frames = _decoded(source, stream, first_pts)
        first = next(frames, None)
        if first is None:
            return
        if first.pts is None or first.pts <= first_pts or target <= start:
            yield first
            yield from frames
            return
        target, step = max(start, min(target, first.pts) - step), step * 2


def _decoded(source: InputContainer, stream: VideoStream, first_pts: int) -> Iterator[Any]:
    """The stream's frames from where the container stands, except those showing before
    ``first_pts`` that no other frame refers to: they are not decoded at all (FFmpeg's
    ``skip_frame``), which makes the way from a distant keyframe to a chunk a third
    cheaper for H.264 with B-frames (x264's defaults put a keyframe only every 250)."""
    codec = stream.codec_context
    for packet in source.demux(stream):
        before = packet.pts is not None and packet.pts < first_pts
        codec.skip_frame = "NONREF" if before else "DEFAULT"
        yield from codec.decode(packet)


# --- encoding a segment ---------------------------------------------------------------

_X264_OPTIONS = {"preset": "veryfast", "crf": "20", "threads": "1"}
_VP9_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "crf": "30",
    "b": "0",
    "lag-in-frames": "0",
    "auto-alt-ref": "0",
    "row-mt": "0",
    "threads": "1",
}
_VIDEO_CODECS: dict[VideoFormat, str] = {"mp4": "libx264", "webm": "libvpx-vp9"}
_VIDEO_CODEC_NAMES: dict[VideoFormat, str] = {"mp4": "h264", "webm": "vp9"}


def encoded_size(info: VideoInfo, output_format: VideoFormat) -> tuple[int, int]:
    """The stored width and height that ``encode_segment`` writes: the input's, less the
    last column and row when odd for MP4 (H.264 in yuv420p needs even sides)."""
    if output_format == "mp4":
        return info.width & ~1, info.height & ~1
    return info.width, info.height


def encode_segment(
    frames: Iterable[tuple[int, RGBImage]], info: VideoInfo, output_format: VideoFormat
) -> bytes:
    """Encode upright RGB ``frames`` (pts, image) into a small video-only container of
    ``output_format``: turned back to the stored orientation, with the input's display
    rotation, each frame at its original pts, no B-frames (pts == dts) so that segments
    join by stream copy. MP4: H.264 (libx264 veryfast, crf 20, yuv420p); an odd last
    column or row of the stored frame is cropped (see ``encoded_size``). WebM: VP9
    (libvpx-vp9, realtime), yuv420p. Raises ValueError for a frame of the wrong size and
    InvalidVideo for no frames at all (their part of the video did not decode)."""
    if output_format not in _VIDEO_CODECS:
        raise ValueError(f"unknown video format {output_format!r} (mp4 or webm)")
    width, height = encoded_size(info, output_format)
    durations = _frame_durations(info)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=output_format) as output:
        stream = _add_video_stream(output, info, output_format, width, height)
        count = 0
        for pts, image in frames:
            stored = _upright(image, -info.rotation)
            if stored.shape[:2] != (info.height, info.width) and stored.shape[:2] != (
                height,
                width,
            ):
                raise ValueError(
                    f"frame {pts} is {image.shape[1]}x{image.shape[0]} upright; "
                    f"the video's frames are {info.width}x{info.height} stored, "
                    f"rotated {info.rotation} degrees"
                )
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(stored[:height, :width]), format="rgb24"
            )
            frame.pts = pts
            frame.time_base = info.time_base
            output.mux(_timed(stream.encode(frame), durations))
            count += 1
        if not count:
            raise InvalidVideo("this part of the video has no decodable frame")
        output.mux(_timed(stream.encode(None), durations))
    return buffer.getvalue()


def _frame_durations(info: VideoInfo) -> dict[int, int]:
    """Each frame's duration in time_base units: until the next frame, and for the last
    one what is left of the video's duration (at least one unit)."""
    pts = info.frame_pts
    durations = {now: later - now for now, later in itertools.pairwise(pts)}
    total = round(Fraction(info.duration_s) / info.time_base)
    durations[pts[-1]] = max(1, total - (pts[-1] - pts[0]))
    return durations


def _timed(packets: list[Packet[Any]], durations: dict[int, int]) -> list[Packet[Any]]:
    """``packets`` lasting as their frames did in the input (the encoder only knows the
    average rate; the last frame's duration ends the video)."""
    for packet in packets:
        if packet.pts is not None and packet.pts in durations:
            packet.duration = durations[packet.pts]
    return packets


def _add_video_stream(
    output: OutputContainer, info: VideoInfo, output_format: VideoFormat, width: int, height: int
) -> VideoStream:
    options = _X264_OPTIONS if output_format == "mp4" else _VP9_OPTIONS
    stream = output.add_stream(
        _VIDEO_CODECS[output_format], rate=info.average_rate, options=dict(options)
    )
    if not isinstance(stream, VideoStream):
        raise TypeError(f"{_VIDEO_CODECS[output_format]} is not a video encoder")
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = info.time_base
    codec = stream.codec_context
    codec.time_base = info.time_base  # else PyAV rescales pts to 1/rate: VFR would be lost
    codec.max_b_frames = 0
    codec.thread_count = 1
    if info.rotation:
        stream.set_display_rotation(info.rotation)
    return stream


# --- joining segments -----------------------------------------------------------------

#: audio codecs each output container takes as they are (others are encoded again)
_AUDIO_COPY: dict[VideoFormat, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "opus", "alac"}),
    "webm": frozenset({"opus", "vorbis"}),
}
_AUDIO_ENCODERS: dict[VideoFormat, str] = {"mp4": "aac", "webm": "libopus"}
_AAC_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})


def assemble(
    segments: Sequence[bytes], original: bytes, info: VideoInfo, output_format: VideoFormat
) -> bytes:
    """One video of ``output_format``: the segments' video packets in order (stream copy,
    they keep their absolute pts) and the original's audio, copied when its codec fits
    the container (aac, mp3, opus, alac into MP4; opus, vorbis into WebM) and otherwise
    encoded again (AAC for MP4, Opus for WebM). The display rotation is the original's;
    an MP4 has its index first (``+faststart``) so that a browser plays it at once.

    Raises InvalidVideo for a segment that is not a video of ``output_format`` or whose
    packets do not follow the previous segment's, and for an unreadable original."""
    if not segments:
        raise InvalidVideo("no segments to join")
    if output_format == "webm":
        buffer = io.BytesIO()
        _join(buffer, {}, segments, original, info, output_format)
        return buffer.getvalue()
    # +faststart moves the index in front in a second pass that reopens the output by its
    # name: it needs a real file, not a buffer
    with tempfile.TemporaryDirectory(prefix="pixelbus-video-") as folder:
        path = Path(folder) / "joined.mp4"
        _join(str(path), {"movflags": "+faststart"}, segments, original, info, output_format)
        return path.read_bytes()


def _join(
    target: str | io.BytesIO,
    options: dict[str, str],
    segments: Sequence[bytes],
    original: bytes,
    info: VideoInfo,
    output_format: VideoFormat,
) -> None:
    sources: list[InputContainer] = []
    try:
        for number, segment in enumerate(segments):
            sources.append(_open_segment(segment, output_format, number))
        with (
            _open(original) as source,
            av.open(target, mode="w", format=output_format, options=options) as output,
        ):
            template = sources[0].streams.video[0]
            video = output.add_stream_from_template(template)
            video.time_base = template.time_base
            # the average rate is not in a template: WebM writes it as DefaultDuration
            video.codec_context.framerate = info.average_rate
            if info.rotation:
                video.set_display_rotation(info.rotation)
            audio_packets = _audio_packets(source, output, output_format)
            video_packets = _segment_packets(sources, video)
            for packet in heapq.merge(video_packets, audio_packets, key=_packet_time):
                output.mux(packet)
    finally:
        for opened in sources:
            opened.close()


def _open_segment(segment: bytes, output_format: VideoFormat, number: int) -> InputContainer:
    source = _open(segment)
    streams = source.streams.video
    if not streams or streams[0].codec_context.name != _VIDEO_CODEC_NAMES[output_format]:
        source.close()
        raise InvalidVideo(f"segment {number} is not a {output_format} video segment")
    return source


def _packet_time(packet: Packet[Any]) -> Fraction:
    return Fraction(packet.dts or 0) * Fraction(packet.time_base or 1)


def _segment_packets(sources: Sequence[InputContainer], video: Any) -> Iterator[Packet[Any]]:
    last: Fraction | None = None
    for number, source in enumerate(sources):
        stream = source.streams.video[0]
        try:
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue
                time = _packet_time(packet)
                if last is not None and time <= last:
                    raise InvalidVideo(
                        f"segment {number} starts at or before the end of the one before it"
                    )
                last = time
                packet.stream = video
                yield packet
        except _FFMPEG_ERRORS as exc:
            raise InvalidVideo(f"segment {number} is truncated or damaged") from exc


def _audio_packets(
    source: InputContainer, output: OutputContainer, output_format: VideoFormat
) -> Iterator[Packet[Any]]:
    """The original's audio as packets of ``output``'s audio stream (added here)."""
    if not source.streams.audio:
        return iter(())
    audio = source.streams.audio[0]
    if audio.codec_context.name in _AUDIO_COPY[output_format]:
        copied = output.add_stream_from_template(audio)
        return _copied_audio(source, audio, copied)
    return _encoded_audio(source, audio, output, output_format)


def _copied_audio(source: InputContainer, audio: AudioStream, copied: Any) -> Iterator[Packet[Any]]:
    try:
        for packet in source.demux(audio):
            if packet.dts is None:
                continue
            packet.stream = copied
            yield packet
    except _FFMPEG_ERRORS as exc:
        raise InvalidVideo("the video's audio track is truncated or damaged") from exc


def _encoded_audio(
    source: InputContainer, audio: AudioStream, output: OutputContainer, output_format: VideoFormat
) -> Iterator[Packet[Any]]:
    rate = audio.codec_context.sample_rate or 48000
    if output_format == "webm" or rate not in _AAC_RATES:
        rate = 48000  # Opus runs at 48 kHz; AAC at one of its own rates
    layout = "stereo" if (audio.codec_context.channels or 1) > 1 else "mono"
    encoded = output.add_stream(_AUDIO_ENCODERS[output_format], rate=rate, layout=layout)
    if not isinstance(encoded, AudioStream):
        raise TypeError(f"{_AUDIO_ENCODERS[output_format]} is not an audio encoder")
    encoded.codec_context.thread_count = 1
    return _encode_audio(source, audio, encoded, rate, layout)


def _encode_audio(
    source: InputContainer, audio: AudioStream, encoded: AudioStream, rate: int, layout: str
) -> Iterator[Packet[Any]]:
    codec = encoded.codec_context
    resampler = av.AudioResampler(format=codec.format, layout=layout, rate=rate)
    start: int | None = None
    written = 0
    try:
        # a last None flushes the resampler
        for frame in itertools.chain(source.decode(audio), [None]):
            if (
                start is None
                and frame is not None
                and frame.pts is not None
                and frame.time_base is not None
            ):
                start = round(frame.pts * Fraction(frame.time_base) * rate)
            for piece in resampler.resample(frame):
                piece.pts = (start or 0) + written
                piece.time_base = Fraction(1, rate)
                written += piece.samples
                yield from encoded.encode(piece)
        yield from encoded.encode(None)
    except _FFMPEG_ERRORS as exc:
        raise InvalidVideo("the video's audio track cannot be decoded") from exc
