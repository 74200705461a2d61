"""The video fan-out's pure parts: chunk ranges and the job's count."""

from __future__ import annotations

import pytest

from pixelbus.contracts.video import ChunkDone, ChunkRange, VideoJob, chunk_ranges


def test_chunks_cover_every_frame_once_in_order_by_timestamp() -> None:
    pts = [0, 512, 1024, 2000, 2100, 3000, 3512]  # irregular: a variable frame rate
    ranges = chunk_ranges(pts, 3)
    assert [(r.first_frame, r.frames, r.first_pts, r.last_pts) for r in ranges] == [
        (0, 3, 0, 1024),
        (3, 3, 2000, 3000),
        (6, 1, 3512, 3512),
    ]
    assert [r.index for r in ranges] == [0, 1, 2]
    assert ranges[1].label == "frames 3-5"
    assert chunk_ranges([], 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        chunk_ranges(pts, 0)


def _done(index: int, frames: int, faces: int, worker: str = "w1") -> ChunkDone:
    chunk = ChunkRange(index=index, first_frame=0, frames=frames, first_pts=0, last_pts=0)
    return ChunkDone(
        task_id="t",
        environment="face_swap",
        workflow="face_swap",
        attempt=1,
        chunk=chunk,
        chunks=3,
        frames_total=7,
        segment_object="o",
        frames_with_faces=faces,
        worker=worker,
    )


def test_a_chunk_is_counted_once_whatever_the_order_and_repeats() -> None:
    job = VideoJob(task_id="t", chunks=3, frames_total=7)
    after = job.with_chunk(_done(2, 1, 0)).with_chunk(_done(0, 3, 3))
    again = after.with_chunk(_done(2, 1, 0))  # a redelivered ChunkDone
    assert again is after
    assert (after.done, after.frames_done, after.frames_with_faces) == ((0, 2), 4, 3)
    assert not after.complete
    full = after.with_chunk(_done(1, 3, 1, worker="w2"))
    assert full.complete and full.frames_done == 7 and full.done == (0, 1, 2)
    assert full.workers == ("w1", "w2")


def test_frames_under_way_count_towards_progress_and_never_go_back() -> None:
    job = VideoJob(task_id="t", chunks=3, frames_total=7)
    under_way = job.with_partial(0, 2).with_partial(1, 1)
    assert under_way.frames_swapped == 3 and under_way.frames_done == 0
    # a chunk started over (its worker died) reports fewer frames: no news
    assert under_way.with_partial(0, 1) is under_way
    assert under_way.with_partial(0, 2) is under_way
    done = under_way.with_chunk(_done(0, 3, 3))
    assert done.swapping == {1: 1} and done.frames_swapped == 4
    # a late partial report of a chunk already done changes nothing
    assert done.with_partial(0, 3) is done
    swapped = [
        j.frames_swapped
        for j in (job, under_way, done, done.with_partial(1, 3), done.with_chunk(_done(1, 3, 0)))
    ]
    assert swapped == sorted(swapped)
