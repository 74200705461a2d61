"""Video face swap, fanned out: the messages between the worker that splits a video task,
the workers that swap its chunks and the one that assembles the result. Pure.

A face-swap task whose target is a video is split by the face-swap worker that takes it
into chunks of frames (``VideoChunk``, one message each on the video stream's work
queue), which any face-swap worker takes; each chunk's swapped frames go to the Object
Store as a small video segment and a ``ChunkDone`` says so. The assembler counts the
chunks in the job's record (``VideoJob``, one per task in the video bucket, updated by
compare-and-set so that exactly one update completes it) and, when all are in, joins the
segments in order with the original's audio and publishes the task's ``OutputsReady``:
from there the task ends like any other (the uploader stores the file).

Message ids make every publish idempotent: a splitter or chunk worker that dies and runs
again publishes the same ids, which the stream's duplicate window drops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from pixelbus.contracts.subjects import sanitize_token

__all__ = [
    "VIDEO_ASSEMBLER_CONSUMER",
    "VIDEO_BUCKET",
    "VIDEO_CHUNKS_CONSUMER",
    "VIDEO_CHUNKS_FILTER",
    "VIDEO_DONE_FILTER",
    "VIDEO_STREAM",
    "VIDEO_SUBJECT_ROOT",
    "ChunkDone",
    "ChunkRange",
    "VideoChunk",
    "VideoJob",
    "chunk_done_subject",
    "chunk_object",
    "chunk_ranges",
    "chunk_subject",
    "job_object",
]

VIDEO_STREAM = "PIXELBUS_VIDEO"
VIDEO_SUBJECT_ROOT = "pixelbus.video"
VIDEO_CHUNKS_FILTER = f"{VIDEO_SUBJECT_ROOT}.chunk.>"
VIDEO_DONE_FILTER = f"{VIDEO_SUBJECT_ROOT}.done.>"
VIDEO_CHUNKS_CONSUMER = "video-chunks"
VIDEO_ASSEMBLER_CONSUMER = "video-assembler"
#: One ``VideoJob`` per video task being swapped.
VIDEO_BUCKET = "PIXELBUS_VIDEO_JOBS"


class ChunkRange(msgspec.Struct, frozen=True, kw_only=True):
    """Frames ``first_frame`` .. ``first_frame + frames - 1`` (in presentation order),
    whose timestamps run from ``first_pts`` to ``last_pts`` (stream time base)."""

    index: int
    first_frame: int
    frames: int
    first_pts: int
    last_pts: int

    @property
    def label(self) -> str:
        """For messages: ``frames 50-99``."""
        return f"frames {self.first_frame}-{self.first_frame + self.frames - 1}"


class _ChunkMessage(msgspec.Struct, frozen=True, kw_only=True):
    """Which chunk of which task: what both messages about a chunk say."""

    task_id: str
    environment: str
    workflow: str
    #: the attempt of the task that was split (progress and outputs are reported in it)
    attempt: int
    chunk: ChunkRange
    chunks: int
    frames_total: int


class VideoChunk(_ChunkMessage, frozen=True, kw_only=True):
    """A chunk to swap: which frames, of which video, with which options."""

    #: Object Store names of the source image and the target video
    source_object: str
    target_object: str
    #: the task's face-swap options (``wf_json``)
    options: dict[str, Any]
    model: str
    output_format: str


class ChunkDone(_ChunkMessage, frozen=True, kw_only=True):
    """A chunk swapped."""

    #: the swapped segment in the Object Store
    segment_object: str
    #: frames of the chunk where a target face was found (the others pass unchanged)
    frames_with_faces: int
    #: the worker that swapped it
    worker: str = ""


class VideoJob(msgspec.Struct, frozen=True, kw_only=True):
    """The assembler's record of a video task: which chunks are in."""

    task_id: str
    chunks: int
    frames_total: int
    done: tuple[int, ...] = ()
    frames_done: int = 0
    frames_with_faces: int = 0
    #: the workers that swapped its chunks
    workers: tuple[str, ...] = ()
    #: the outputs have been published: a late duplicate ``ChunkDone`` changes nothing
    assembled: bool = False
    #: frames swapped so far of chunks being swapped (by chunk index), for progress
    swapping: dict[int, int] = {}

    @property
    def complete(self) -> bool:
        return len(self.done) == self.chunks

    @property
    def frames_swapped(self) -> int:
        """Frames swapped so far: those of the chunks done and of the chunks under way."""
        return self.frames_done + sum(self.swapping.values())

    def with_partial(self, index: int, frames: int) -> VideoJob:
        """The record with chunk ``index`` ``frames`` frames into its swap (itself when that
        is no news: the chunk is done, or was further along, e.g. before its worker died
        and the chunk started over)."""
        if index in self.done or frames <= self.swapping.get(index, 0):
            return self
        return msgspec.structs.replace(self, swapping={**self.swapping, index: frames})

    def with_chunk(self, done: ChunkDone) -> VideoJob:
        """The record with ``done`` counted (itself when it was counted already)."""
        if done.chunk.index in self.done:
            return self
        return msgspec.structs.replace(
            self,
            done=tuple(sorted((*self.done, done.chunk.index))),
            frames_done=self.frames_done + done.chunk.frames,
            frames_with_faces=self.frames_with_faces + done.frames_with_faces,
            workers=tuple(sorted({*self.workers, done.worker} - {""})),
            swapping={i: n for i, n in self.swapping.items() if i != done.chunk.index},
        )


def chunk_ranges(frame_pts: Sequence[int], frames_per_chunk: int) -> list[ChunkRange]:
    """Consecutive chunks of ``frames_per_chunk`` frames (the last may be shorter) over
    frames whose timestamps are ``frame_pts`` in presentation order."""
    if frames_per_chunk < 1:
        raise ValueError("frames_per_chunk must be at least 1")
    return [
        ChunkRange(
            index=index,
            first_frame=start,
            frames=len(part),
            first_pts=part[0],
            last_pts=part[-1],
        )
        for index, start in enumerate(range(0, len(frame_pts), frames_per_chunk))
        if (part := frame_pts[start : start + frames_per_chunk])
    ]


def chunk_subject(task_id: str, index: int) -> str:
    return f"{VIDEO_SUBJECT_ROOT}.chunk.{sanitize_token(task_id)}.{index}"


def chunk_done_subject(task_id: str, index: int) -> str:
    return f"{VIDEO_SUBJECT_ROOT}.done.{sanitize_token(task_id)}.{index}"


def job_object(task_id: str, name: str) -> str:
    """The Object Store name of one of a video task's working files."""
    return f"video/{sanitize_token(task_id)}/{name}"


def chunk_object(task_id: str, index: int) -> str:
    return job_object(task_id, f"chunk-{index:05d}")
