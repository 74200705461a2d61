"""Following the chosen target face from frame to frame, and steadying its landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from pixelbus.faceswap_worker.engines.base import FaceBox, LocatedFace
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.tracking import FaceFollower, follow, steady
from pixelbus.media.video import VideoLimits, decode_frames, probe_video
from pixelbus.testkit import videos


def box(left: int, top: int = 100, size: int = 80) -> FaceBox:
    return FaceBox(left=left, top=top, right=left + size, bottom=top + size)


def face(left: int, top: int = 100) -> LocatedFace:
    corners = [(left, top), (left + 80, top), (left + 40, top + 80)]
    return LocatedFace(box(left, top), np.array(corners, dtype=np.float32))


def test_the_face_that_overlaps_most_is_followed_even_when_numbers_swap() -> None:
    # two faces crossing: the followed one moved from 100 to 130; it is now numbered 1
    assert follow(box(100), [box(60), box(130)]) == 1
    assert follow(box(130), [box(150), box(110)]) == 0


def test_without_overlap_the_nearest_face_within_reach_is_followed() -> None:
    assert follow(box(100), [box(500), box(190)]) == 1  # moved fast: 90 px, box is 80
    assert follow(box(100), [box(400)]) is None  # gone: another face is not it
    assert follow(box(100), []) is None


def test_steadying_removes_shape_jitter_but_not_movement() -> None:
    rng = np.random.default_rng(7)
    shape = np.array([(0, 0), (80, 0), (40, 80), (20, 40)], dtype=np.float32)
    raw, steadied, before = [], [], None
    for frame in range(40):
        true = shape + np.float32(3 * frame)  # moving 3 px a frame
        noisy = true + rng.normal(0, 1.5, shape.shape).astype(np.float32)
        points, before = steady(noisy, before)
        raw.append(noisy - true)
        steadied.append(points - true)

    def shape_error(errors: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(e - e.mean(axis=0)).mean() for e in errors[5:]]))

    assert shape_error(steadied) < 0.75 * shape_error(raw)
    # the position is this frame's: no lag behind a moving face
    assert abs(float(np.mean([e.mean() for e in steadied[5:]]))) < 0.5


def test_the_follower_keeps_the_chosen_person_through_a_crossing_and_waits_when_lost() -> None:
    follower = FaceFollower(0)
    assert follower.choose([face(100), face(400)])[0].box == box(100)
    # the other face passes it in the lower lane: the followed one (now at 130) is
    # numbered 1 in this frame
    assert follower.choose([face(20, 300), face(130)])[0].box == box(130)
    assert follower.choose([]) == []  # lost: the frame passes unchanged
    assert follower.choose([face(10), face(300)])[0].box == box(10)  # by its number again
    every = FaceFollower(None)
    assert len(every.choose([face(100), face(400)])) == 2


@pytest.fixture(scope="module")
def landmark_engine() -> LandmarkEngine:
    return LandmarkEngine()


def test_two_real_faces_crossing_keep_their_identity_with_the_builtin_engine(
    landmark_engine: LandmarkEngine,
) -> None:
    """Two face photos cross (one in the upper lane going right, one in the lower going
    left): the follower asked for face 0 (the leftmost at the start, the upper one) stays
    on the upper face all the way, although it is numbered 1 once they have passed."""
    crops = videos.face_crops()
    data = videos.crossing_video(
        crops["astronaut"], crops["hopper"], seconds=1.2, fps=10, size=(480, 360), audio_hz=None
    )
    info = probe_video(data, VideoLimits(1 << 30, 3600, 10**6, 1 << 26))
    follower = FaceFollower(0)
    tops, renumbered = [], 0
    for _, frame in decode_frames(data, info.frame_pts[0], info.frame_pts[-1]):
        faces = landmark_engine.locate(frame, options=None)  # type: ignore[arg-type]
        chosen = follower.choose(faces)
        if len(faces) == 2 and chosen:
            tops.append(chosen[0].box.top)
            renumbered += chosen[0].box != faces[0].box
    assert len(tops) >= 8
    assert max(tops) < 180, "the follower jumped to the face in the lower lane"
    assert renumbered >= 2, "the faces never swapped numbers: the video does not test it"
