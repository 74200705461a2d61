"""pixelbus.media.video on small videos built in memory from real photos (no servers)."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from pixelbus.media.arrays import RGBImage
from pixelbus.media.errors import InvalidVideo, MediaError, VideoTooLarge
from pixelbus.media.video import (
    VideoFormat,
    VideoInfo,
    VideoLimits,
    assemble,
    decode_frames,
    encode_segment,
    is_video,
    probe_video,
)
from pixelbus.testkit import videos

LIMITS = VideoLimits(max_bytes=1 << 30, max_duration_s=3600, max_frames=10**6, max_pixels=1 << 26)
SIZE = (256, 192)


def build(**options: object) -> bytes:
    """A 1.2 s pan over Grace Hopper at 25 fps (options go to ``videos.pan_video``)."""
    settings: dict[str, object] = {"seconds": 1.2, "fps": 25, "size": SIZE} | options
    return videos.pan_video(videos.photos()["hopper"], **settings)  # type: ignore[arg-type]


_BUILT: dict[str, bytes] = {}


def video(name: str, **options: object) -> bytes:
    """``build(**options)``, built once per test session under ``name``."""
    if name not in _BUILT:
        _BUILT[name] = build(**options)
    return _BUILT[name]


def mp4() -> bytes:
    return video("mp4")


def webm() -> bytes:
    return video("webm", output_format="webm")


def vfr() -> bytes:
    return video("vfr", vfr=True)


def all_frames(data: bytes) -> list[tuple[int, RGBImage]]:
    info = probe_video(data, LIMITS)
    return list(decode_frames(data, info.frame_pts[0], info.frame_pts[-1]))


def audio_packets(data: bytes) -> list[tuple[Fraction, bytes]]:
    """Every audio packet: its presentation time in seconds and its bytes."""
    with av.open(io.BytesIO(data), mode="r") as source:
        stream = source.streams.audio[0]
        return [
            (Fraction(packet.pts or 0) * Fraction(stream.time_base or 1), bytes(packet))
            for packet in source.demux(stream)
            if packet.dts is not None
        ]


def mean_error(first: RGBImage, second: RGBImage) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


# --- is_video -------------------------------------------------------------------------


def image_bytes(format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(videos.photos()["astronaut"][:64, :64]).save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "mkv"])
def test_videos_are_recognised_by_content(container: str) -> None:
    data = video(f"short-{container}", output_format=container, seconds=0.2, audio_hz=None)
    assert is_video(data)
    assert is_video(data[:64])  # the first bytes are enough: nothing is decoded
    assert probe_video(data, LIMITS).container == container


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(image_bytes("PNG"), id="png"),
        pytest.param(image_bytes("JPEG"), id="jpeg"),
        pytest.param(image_bytes("GIF"), id="gif"),
        pytest.param(b"video.mp4", id="a-name-is-not-content"),
        pytest.param(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", id="avif"),
        pytest.param(b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A isom", id="m4a-audio"),
        pytest.param(b"\x1a\x45\xdf\xa3\x84\x42\x82\x81x", id="ebml-other-doctype"),
        pytest.param(b"", id="empty"),
    ],
)
def test_other_bytes_are_not_videos(data: bytes) -> None:
    assert not is_video(data)
    with pytest.raises(InvalidVideo) as raised:
        probe_video(data, LIMITS)
    assert raised.value.code == "invalid_video" and not raised.value.retryable


# --- probe_video ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "container", "codec", "audio"),
    [(mp4, "mp4", "h264", "aac"), (webm, "webm", "vp9", "opus")],
)
def test_probe_tells_what_the_builder_made(
    make: Callable[[], bytes], container: str, codec: str, audio: str
) -> None:
    info = probe_video(make(), LIMITS)
    times = videos.frame_times(1.2, 25)
    assert (info.container, info.codec, info.audio_codec) == (container, codec, audio)
    assert (info.width, info.height, info.rotation) == (*SIZE, 0)
    assert info.frames == len(times) == 30
    assert [pts * info.time_base for pts in info.frame_pts] == times
    assert info.average_rate == 25
    assert info.duration_s == pytest.approx(1.2)


def test_probe_of_a_variable_frame_rate() -> None:
    info = probe_video(vfr(), LIMITS)
    times = videos.frame_times(1.2, 25, vfr=True)
    assert [pts * info.time_base for pts in info.frame_pts] == times
    gaps = {b - a for a, b in itertools.pairwise(info.frame_pts)}
    assert len(gaps) > 1  # irregular
    # the last frame lasts what the encoder says: about one frame
    assert float(times[-1]) < info.duration_s <= float(times[-1]) + 0.06


def test_probe_without_audio() -> None:
    assert probe_video(video("silent", audio_hz=None), LIMITS).audio_codec is None


@pytest.mark.parametrize(
    ("limits", "setting", "words"),
    [
        (VideoLimits(10_000, 3600, 10**6, 1 << 26), "PIXELBUS_VIDEO_MAX_BYTES", "bytes"),
        (VideoLimits(1 << 30, 1.0, 10**6, 1 << 26), "PIXELBUS_VIDEO_MAX_DURATION_S", "1.2 s"),
        (VideoLimits(1 << 30, 3600, 29, 1 << 26), "PIXELBUS_VIDEO_MAX_FRAMES", "29 frames"),
        (VideoLimits(1 << 30, 3600, 10**6, 256 * 191), "PIXELBUS_VIDEO_MAX_PIXELS", "256x192"),
    ],
)
def test_each_limit_is_refused_by_name(limits: VideoLimits, setting: str, words: str) -> None:
    with pytest.raises(VideoTooLarge) as raised:
        probe_video(mp4(), limits)
    assert setting in raised.value.message and words in raised.value.message
    assert raised.value.code == "video_too_large" and not raised.value.retryable
    assert isinstance(raised.value, MediaError)


def test_the_duration_limit_message() -> None:
    with pytest.raises(VideoTooLarge, match=r"^the video is 1\.2 s long; at most 1 s \("):
        probe_video(mp4(), VideoLimits(1 << 30, 1.0, 10**6, 1 << 26))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: mp4()[: len(mp4()) // 2], id="mp4-cut-in-half"),
        pytest.param(lambda: mp4()[:2000], id="mp4-header-only"),
        pytest.param(lambda: b"\x00\x00\x00\x18ftypisom" + bytes(2000), id="ftyp-then-zeros"),
        pytest.param(lambda: webm()[:300], id="webm-header-only"),
    ],
)
def test_damaged_videos_are_invalid(data: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidVideo) as raised:
        probe_video(data(), LIMITS)
    assert raised.value.code == "invalid_video"


def test_a_webm_cut_in_half_keeps_its_first_frames() -> None:
    cut = webm()[: len(webm()) // 2]
    info = probe_video(cut, LIMITS)
    assert 0 < info.frames < 30
    assert len(all_frames(cut)) == info.frames


def test_a_file_without_video_is_invalid() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    with pytest.raises(InvalidVideo, match="no video stream"):
        probe_video(buffer.getvalue(), LIMITS)


# --- decode_frames --------------------------------------------------------------------


def test_all_frames_are_decoded_in_order_and_upright() -> None:
    frames = all_frames(mp4())
    info = probe_video(mp4(), LIMITS)
    assert [pts for pts, _ in frames] == list(info.frame_pts)
    assert all(
        image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8 for _, image in frames
    )


@pytest.mark.parametrize("name", ["mp4", "webm", "vfr", "gop10"])
@pytest.mark.parametrize(("first", "last"), [(13, 21), (10, 10), (0, 4), (25, 29)])
def test_a_range_is_exactly_its_frames(name: str, first: int, last: int) -> None:
    """Seeking lands on the keyframe at or before the range (every 10 frames in gop10)
    and the frames before the range are dropped: the same frames as decoding them all."""
    options: dict[str, object] = {
        "mp4": {},
        "webm": {"output_format": "webm"},
        "vfr": {"vfr": True},
        "gop10": {"gop": 10},
    }[name]  # type: ignore[assignment]
    data = video(name, **options)
    info = probe_video(data, LIMITS)
    everything = all_frames(data)
    pts = info.frame_pts
    ranged = list(decode_frames(data, pts[first], pts[last]))
    assert [p for p, _ in ranged] == list(pts[first : last + 1])
    for (_, got), (_, expected) in zip(ranged, everything[first : last + 1], strict=True):
        assert np.array_equal(got, expected)


def test_a_range_between_frames_holds_the_frames_inside() -> None:
    info = probe_video(mp4(), LIMITS)
    pts = info.frame_pts
    ranged = [p for p, _ in decode_frames(mp4(), pts[3] + 1, pts[6] - 1)]
    assert ranged == list(pts[4:6])


def tkhd_matrix(data: bytes) -> tuple[int, int, int, int]:
    """a, b, c, d of the video track header's matrix (16.16 fixed point, signed)."""
    at = data.index(b"tkhd")
    version = data[at + 4]
    matrix = at + 8 + (32 if version == 1 else 20) + 16
    a, b, _u, c, d = struct.unpack(">iiiii", data[matrix : matrix + 20])
    return a >> 16, b >> 16, c >> 16, d >> 16


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_videos_are_decoded_upright(rotation: int) -> None:
    """A phone's portrait video is stored sideways with a display rotation; its frames
    come out as the unrotated video's."""
    data = video(f"rotated{rotation}", rotation=rotation)
    info = probe_video(data, LIMITS)
    assert info.rotation == rotation
    stored_size = SIZE if rotation == 180 else SIZE[::-1]
    assert (info.width, info.height) == stored_size
    upright = all_frames(mp4())
    for (_, got), (_, expected) in zip(all_frames(data), upright, strict=True):
        assert got.shape == expected.shape
        assert mean_error(got, expected) < 3  # encoded apart, from the same pixels


def test_the_rotation_direction_follows_the_quicktime_matrix() -> None:
    """-90 is a phone's portrait video: the track matrix turns it a quarter clockwise for
    display (a=0, b=1, c=-1, d=0), so the stored frame is the upright one turned a quarter
    counter-clockwise, and decode_frames turns it back."""
    data = video("rotated-90", rotation=-90)
    assert tkhd_matrix(data) == (0, 1, -1, 0)
    with av.open(io.BytesIO(data), mode="r") as source:
        stored = np.asarray(next(source.decode(video=0)).to_ndarray(format="rgb24"), np.uint8)
    upright = all_frames(mp4())[0][1]
    assert mean_error(stored, np.rot90(upright, 1)) < 3
    assert mean_error(all_frames(data)[0][1], upright) < 3


def test_an_undecodable_range_is_invalid() -> None:
    with pytest.raises(InvalidVideo):
        list(decode_frames(b"not a video", 0, 10))


# --- encode_segment and assemble ------------------------------------------------------


def split_and_join(data: bytes, output_format: VideoFormat, parts: int = 3) -> bytes:
    info = probe_video(data, LIMITS)
    pts = info.frame_pts
    bounds = np.linspace(0, len(pts), parts + 1).astype(int)
    segments = [
        encode_segment(decode_frames(data, pts[start], pts[stop - 1]), info, output_format)
        for start, stop in itertools.pairwise(bounds)
    ]
    return assemble(segments, data, info, output_format)


def assert_same_video(original: bytes, joined: bytes, *, max_error: float = 6) -> VideoInfo:
    before, after = probe_video(original, LIMITS), probe_video(joined, LIMITS)
    seconds = [pts * before.time_base for pts in before.frame_pts]
    assert [pts * after.time_base for pts in after.frame_pts] == seconds
    assert after.rotation == before.rotation
    assert after.average_rate == before.average_rate
    assert after.duration_s == pytest.approx(before.duration_s, abs=0.002)  # WebM: ms
    for (_, got), (_, expected) in zip(all_frames(joined), all_frames(original), strict=True):
        assert got.shape == expected.shape
        assert mean_error(got, expected) < max_error
    return after


@pytest.mark.parametrize(
    ("name", "options", "output_format"),
    [
        ("mp4", {}, "mp4"),
        ("webm", {"output_format": "webm"}, "webm"),
        ("vfr", {"vfr": True}, "mp4"),
        ("vfr-webm", {"vfr": True, "output_format": "webm"}, "webm"),
        ("rotated90", {"rotation": 90}, "mp4"),
        ("rotated-90", {"rotation": -90}, "mp4"),
        ("rotated180-webm", {"rotation": 180, "output_format": "webm"}, "webm"),
    ],
)
def test_three_segments_join_into_the_same_video(
    name: str, options: dict[str, object], output_format: VideoFormat
) -> None:
    original = video(name, **options)
    joined = split_and_join(original, output_format)
    after = assert_same_video(original, joined)
    before = probe_video(original, LIMITS)
    if before.container == output_format:
        assert after.frame_pts == before.frame_pts  # the very same pts
        assert after.duration_s == pytest.approx(before.duration_s, abs=1e-6)
    assert after.codec == {"mp4": "h264", "webm": "vp9"}[output_format]
    if (before.audio_codec, output_format) in (("aac", "mp4"), ("opus", "webm")):
        assert audio_packets(joined) == audio_packets(original)  # copied as they were


def test_an_mp4_starts_with_its_index() -> None:
    joined = split_and_join(mp4(), "mp4")
    assert joined.index(b"moov") < joined.index(b"mdat")
    assert joined[4:8] == b"ftyp"


def test_segments_have_no_b_frames() -> None:
    info = probe_video(mp4(), LIMITS)
    segment = encode_segment(decode_frames(mp4(), 0, info.frame_pts[-1]), info, "mp4")
    with av.open(io.BytesIO(segment), mode="r") as source:
        packets = [p for p in source.demux(video=0) if p.dts is not None]
    assert [p.pts for p in packets] == [p.dts for p in packets] == list(info.frame_pts)
    assert packets[0].is_keyframe


def test_mp4_audio_is_encoded_again_for_webm() -> None:
    joined = split_and_join(mp4(), "webm")
    after = assert_same_video(mp4(), joined)
    assert (after.container, after.audio_codec) == ("webm", "opus")
    before, now = audio_packets(mp4()), audio_packets(joined)
    with av.open(io.BytesIO(mp4()), mode="r") as source:
        aac_end = float(source.streams.audio[0].duration or 0) / 48000
    with av.open(io.BytesIO(joined), mode="r") as source:
        stream = source.streams.audio[0]
        last = [p for p in source.demux(stream) if p.dts is not None][-1]
        opus_end = float((last.pts or 0) + (last.duration or 0)) * float(stream.time_base or 1)
    assert len(now) > 0 and before[0][1] != now[0][1]
    assert abs(opus_end - aac_end) < 0.05


def test_webm_audio_is_copied_into_mp4() -> None:
    joined = split_and_join(webm(), "mp4")
    after = assert_same_video(webm(), joined)
    assert (after.container, after.audio_codec) == ("mp4", "opus")
    assert [b for _, b in audio_packets(joined)] == [b for _, b in audio_packets(webm())]


def test_an_odd_size_loses_its_last_column_and_row_in_mp4() -> None:
    """H.264 in yuv420p needs even sides: the last odd column and row are cropped."""
    odd = video("odd", output_format="webm", size=(161, 121), audio_hz=None)
    info = probe_video(odd, LIMITS)
    assert (info.width, info.height) == (161, 121)
    joined = split_and_join(odd, "mp4", parts=2)
    after = probe_video(joined, LIMITS)
    assert (after.width, after.height, after.audio_codec) == (160, 120, None)
    for (_, got), (_, expected) in zip(all_frames(joined), all_frames(odd), strict=True):
        assert mean_error(got, expected[:120, :160]) < 6
    assert probe_video(split_and_join(odd, "webm", parts=2), LIMITS).width == 161


def test_segments_out_of_order_are_refused() -> None:
    info = probe_video(mp4(), LIMITS)
    pts = info.frame_pts
    first = encode_segment(decode_frames(mp4(), pts[0], pts[9]), info, "mp4")
    second = encode_segment(decode_frames(mp4(), pts[10], pts[-1]), info, "mp4")
    with pytest.raises(InvalidVideo, match="segment 1"):
        assemble([second, first], mp4(), info, "mp4")
    with pytest.raises(InvalidVideo, match="segment 0"):
        assemble([first], mp4(), info, "webm")  # an mp4 segment in a webm


def test_a_segment_needs_frames_of_the_video() -> None:
    info = probe_video(mp4(), LIMITS)
    with pytest.raises(InvalidVideo, match="no decodable frame"):
        encode_segment(iter(()), info, "mp4")
    wrong = np.zeros((SIZE[0], SIZE[1], 3), dtype=np.uint8)  # sideways
    with pytest.raises(ValueError, match="frame 0 is 192x256 upright"):
        encode_segment([(0, wrong)], info, "webm")


# --- the test kit's builders ----------------------------------------------------------


def test_builders_are_deterministic_and_their_frames_move() -> None:
    faces = videos.face_crops()
    group = videos.photos()["group"]
    made: dict[str, Callable[[], bytes]] = {
        "zoom": lambda: videos.zoom_video(group, seconds=0.4, fps=25, size=(160, 120)),
        "crossing": lambda: videos.crossing_video(
            faces["astronaut"], faces["hopper"], seconds=0.4, fps=25, size=(160, 120)
        ),
    }
    for name, make in made.items():
        data = make()
        assert make() == data, name
        info = probe_video(data, LIMITS)
        assert (info.frames, info.width, info.height) == (10, 160, 120), name
        frames = all_frames(data)
        assert mean_error(frames[0][1], frames[-1][1]) > 5, name
