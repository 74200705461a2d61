"""Video targets, fanned out across the face-swap workers (``pixelbus.contracts.video``).

- ``VideoSplitter`` runs in the handler of the task: it checks the video against the
  limits, puts the source image and the target video into the Object Store, records the
  job, publishes one ``VideoChunk`` per chunk of frames and hands the task on
  (``DEFERRED``): the task stays PROCESSING while its chunks are swapped.
- ``ChunkWorker`` (a consumer loop in every face-swap worker) swaps one chunk's frames
  with the task's engine and options, writes them as a video segment to the Object Store
  and publishes ``ChunkDone``. While it swaps, it adds the chunk's frames so far to the
  job's record every ``PIXELBUS_VIDEO_PROGRESS_INTERVAL_S`` and reports the task's ``frames_done /
  frames_total`` from it: progress moves frame by frame, whichever workers hold the
  chunks. A worker that dies mid-chunk costs that chunk's redo only: the chunk comes back
  after the ack wait. A frame without a target face passes unchanged.
- ``Assembler`` (another consumer loop in every face-swap worker) counts the chunks in the
  job's record (compare-and-set: exactly one update completes it), reports the progress
  from it, and when all are in joins the segments in order with the original's audio and
  publishes the task's ``OutputsReady``; the uploader then stores the file and deletes the
  working objects like any inputs.

Progress events are numbered by the record's revision: every update of it (by any
worker) has its own, and the frames it counts never go down.

Cancel: a chunk worker reads the task's state before a chunk and every few seconds while
it swaps; a cancel request stops the chunk and ends the task CANCELLED, and every other
chunk of it is skipped. A chunk that fails for good (bad frames, no source face, out of
attempts) fails the task with its frame range in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.errors import PixelbusError
from pixelbus.contracts.events import TaskProgress
from pixelbus.contracts.subjects import OUTPUTS_BUCKET, STATE_BUCKET
from pixelbus.contracts.video import (
    VIDEO_ASSEMBLER_CONSUMER,
    VIDEO_BUCKET,
    VIDEO_CHUNKS_CONSUMER,
    VIDEO_STREAM,
    ChunkDone,
    VideoChunk,
    VideoJob,
    chunk_done_subject,
    chunk_object,
    chunk_ranges,
    chunk_subject,
    job_object,
)
from pixelbus.faceswap_worker.engines.base import FaceSwapEngine, FrameSwapEngine, SwapOptions
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog
from pixelbus.faceswap_worker.engines.errors import NoFaceFound
from pixelbus.faceswap_worker.handler import resolve_engine
from pixelbus.faceswap_worker.options import OutputOptions, VideoFormat, parse_options
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.faceswap_worker.tracking import FaceFollower
from pixelbus.media.arrays import RGBImage, decode_image
from pixelbus.media.video import (
    VideoInfo,
    VideoLimits,
    assemble,
    decode_frames,
    encode_segment,
    probe_video,
)
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.errors import Permanent
from pixelbus.runtime.lifecycle import Before, RetryPolicy, TaskEvents, after_failure, before_run
from pixelbus.runtime.objects import ObjectReader, delete_objects
from pixelbus.runtime.provision import ensure_video
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import DurableLoop, keep_alive
from pixelbus.runtime.state import read_state
from pixelbus.runtime.worker import DEFERRED, OutputFile, TaskContext, TaskResult, pack_outputs

__all__ = [
    "Assembler",
    "ChunkWorker",
    "VideoFanOut",
    "VideoSplitter",
    "open_video",
    "video_limits",
]

log = structlog.get_logger("pixelbus.faceswap.video")
T = TypeVar("T")

#: The fan-out's progress events are numbered apart from the splitting attempt's own.
_PROGRESS_SEQ_BASE = 1_000_000
#: How often a chunk being swapped looks at its task's state (for a cancel request).
_CANCEL_CHECK_S = 2.0
_CONTENT_TYPES: dict[VideoFormat, str] = {"mp4": "video/mp4", "webm": "video/webm"}


def video_limits(settings: FaceSwapSettings) -> VideoLimits:
    video = settings.video
    return VideoLimits(
        max_bytes=video.max_bytes,
        max_duration_s=video.max_duration_s,
        max_frames=video.max_frames,
        max_pixels=video.max_pixels,
    )


class _Job(msgspec.Struct, frozen=True, kw_only=True):
    """What the assembler needs besides ``VideoJob``'s counts (kept in the same record)."""

    source_object: str
    target_object: str
    output_format: str
    model: str
    input_objects: tuple[str, ...] = ()


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The video bucket's value: the counts and the job's working files."""

    counts: VideoJob
    job: _Job


class JobUpdate(NamedTuple):
    record: JobRecord
    revision: int
    #: whether this call changed the record (not: it already said so)
    changed: bool


async def update_job(
    jobs: KeyValue, task_id: str, change: Callable[[VideoJob], VideoJob]
) -> JobUpdate | None:
    """The job's record with its counts changed by ``change`` (compare-and-set, tried again
    when another worker updated it meanwhile); ``None`` for a job not (or no longer) known."""
    while True:
        try:
            entry = await jobs.get(task_id)
        except KeyNotFoundError:
            return None
        record = msgspec.json.decode(entry.value or b"", type=JobRecord)
        counts = change(record.counts)
        if counts is record.counts:
            return JobUpdate(record, entry.revision or 0, changed=False)
        updated = JobRecord(counts=counts, job=record.job)
        try:
            revision = await jobs.update(task_id, msgspec.json.encode(updated), last=entry.revision)
        except KeyWrongLastSequenceError:
            continue
        return JobUpdate(updated, revision, changed=True)


def frames_progress(events: TaskEvents, counts: VideoJob, revision: int) -> TaskProgress:
    """The task's progress as the job's record at ``revision`` counts it."""
    swapped, total = counts.frames_swapped, counts.frames_total
    return events.progress(
        _PROGRESS_SEQ_BASE + revision,
        swapped / max(1, total),
        "video",
        f"{swapped} of {total} frames swapped",
        frames=(swapped, total),
    )


async def _drop_working_objects(objects: Any, message: VideoChunk | ChunkDone) -> None:
    """Remove a video task's working files once it has ended without outputs (a completed
    task's are removed by the uploader). A chunk still being swapped elsewhere then finds
    its task ended, or its input gone and comes back to find it ended."""
    names = [job_object(message.task_id, "source"), job_object(message.task_id, "target")]
    names += [chunk_object(message.task_id, index) for index in range(message.chunks)]
    await delete_objects(objects, names)


class VideoSplitter:
    """Splits a video task into chunks (see the module's docstring)."""

    def __init__(self, nc: Client, settings: FaceSwapSettings, objects: Any) -> None:
        self._js = nc.jetstream()
        self._settings = settings
        self._objects = objects  # nats ObjectStore of OUTPUTS_BUCKET
        self._jobs: KeyValue | None = None

    async def split(
        self,
        ctx: TaskContext,
        *,
        source: bytes,
        target: bytes,
        output: OutputOptions,
        model: str,
        input_objects: tuple[str, ...],
    ) -> TaskResult:
        if output.asked is not None and output.asked not in _CONTENT_TYPES:
            raise Permanent(
                "invalid_input",
                f"output_format {output.asked!r} is for image targets; the target is a "
                "video: mp4 or webm",
            )
        info = await asyncio.to_thread(probe_video, target, video_limits(self._settings))
        await ctx.progress(0.02, node="split", message=f"splitting {info.frames} frames")
        task_id = ctx.task_id
        source_object = job_object(task_id, "source")
        target_object = job_object(task_id, "target")
        await asyncio.gather(
            self._objects.put(source_object, source), self._objects.put(target_object, target)
        )
        per_chunk = max(1, round(self._settings.video.chunk_s * float(info.average_rate)))
        ranges = chunk_ranges(info.frame_pts, per_chunk)
        record = JobRecord(
            counts=VideoJob(task_id=task_id, chunks=len(ranges), frames_total=info.frames),
            job=_Job(
                source_object=source_object,
                target_object=target_object,
                output_format=output.video_format,
                model=model,
                input_objects=input_objects,
            ),
        )
        jobs = await self._bucket()
        with contextlib.suppress(KeyWrongLastSequenceError):  # split before: keep its count
            await jobs.create(task_id, msgspec.json.encode(record))
        created = ctx.created
        for chunk in ranges:
            message = VideoChunk(
                task_id=task_id,
                environment=created.environment,
                workflow=created.workflow,
                attempt=ctx.attempt,
                chunk=chunk,
                chunks=len(ranges),
                frames_total=info.frames,
                source_object=source_object,
                target_object=target_object,
                options=ctx.wf_json,
                model=model,
                output_format=output.video_format,
            )
            await self._js.publish(
                chunk_subject(task_id, chunk.index),
                msgspec.json.encode(message),
                headers={"Nats-Msg-Id": f"{task_id}:chunk:{chunk.index}"},
            )
        log.debug("video split", task_id=task_id, frames=info.frames, chunks=len(ranges))
        return DEFERRED

    async def _bucket(self) -> KeyValue:
        if self._jobs is None:
            self._jobs = await self._js.key_value(VIDEO_BUCKET)
        return self._jobs


def swap_frames(
    frames: Iterator[tuple[int, RGBImage]],
    source: RGBImage,
    engine: FaceSwapEngine,
    options: SwapOptions,
    stop: threading.Event,
    counts: list[int],
) -> Iterator[tuple[int, RGBImage]]:
    """The chunk's frames swapped, lazily (one frame in memory at a time); a frame
    without a target face passes unchanged. ``counts``: [frames handed on, frames with a
    face], counted as the frames go.

    An engine that swaps frame by frame (``FrameSwapEngine``: the built-in one and
    inswapper) prepares the source face once, and its target faces are followed and
    steadied (``FaceFollower``); any other engine swaps each frame as an image."""
    if isinstance(engine, FrameSwapEngine):
        prepared = engine.prepare_source(source, options)
        follower = FaceFollower(options.target_face_index)
    for pts, frame in frames:
        if stop.is_set():
            raise _Stopped
        swapped: RGBImage | None
        if isinstance(engine, FrameSwapEngine):
            faces = follower.choose(engine.locate(frame, options))
            swapped = engine.swap_located(prepared, frame, faces, options) if faces else None
        else:
            try:
                swapped = engine.swap(source, frame, options)
            except NoFaceFound as exc:
                if exc.which == "source":
                    raise
                swapped = None
        if swapped is not None:
            counts[1] += 1
        yield pts, frame if swapped is None else swapped
        counts[0] += 1


class _Stopped(Exception):
    """The chunk's task was cancelled (or ended) while the chunk was being swapped."""


class _Recent(Generic[T]):
    """The last few values loaded, by name: a worker usually swaps several chunks of one
    video in a row, so its inputs (and the video's probe, which reads the whole file) are
    loaded once, not once per chunk."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: OrderedDict[str, T] = OrderedDict()

    async def get(self, name: str, load: Callable[[], Awaitable[T]]) -> T:
        if name in self._entries:
            self._entries.move_to_end(name)
            return self._entries[name]
        value = await load()
        self._entries[name] = value
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return value


class _VideoLoop(DurableLoop):
    """What the chunk and assembler loops share: the buckets (opened on the first
    message), keeping a long message alive, and ending or failing the task of one."""

    stream = VIDEO_STREAM

    def __init__(self, nc: Client, settings: FaceSwapSettings, *, concurrency: int) -> None:
        super().__init__(nc, concurrency=concurrency, grace_s=30.0)
        self._settings = settings
        self._publisher = EventPublisher(self._js)
        self._reader = ObjectReader(self._js, OUTPUTS_BUCKET)
        self._state: KeyValue | None = None
        self._jobs: KeyValue | None = None
        self._objects: Any = None

    async def _open(self) -> None:
        if self._state is None:
            self._state = await self._js.key_value(STATE_BUCKET)
            self._jobs = await self._js.key_value(VIDEO_BUCKET)
            self._objects = await self._js.object_store(OUTPUTS_BUCKET)

    def _keep_alive(self, msg: Msg) -> keep_alive:
        """Tells the server, three times per ack wait, that a long swap or join goes on."""
        return keep_alive(msg, max(0.2, self._settings.bus.ack_wait_for("faceswap") / 3))

    async def _ended(self, message: VideoChunk | ChunkDone, events: TaskEvents) -> bool:
        """Whether the task is over; a task with a cancel request is ended here
        (``TaskCancelled``, its working files removed)."""
        assert self._state is not None
        state, _ = await read_state(self._state, message.task_id)
        before = before_run(state)
        if before is Before.CANCEL:
            assert state is not None
            await self._publish(message, events.cancelled(state.cancel_reason))
            await _drop_working_objects(self._objects, message)
        return before is not Before.RUN

    async def _fail(
        self, message: VideoChunk | ChunkDone, events: TaskEvents, code: str, text: str
    ) -> None:
        await self._publish(message, events.failed(code, text, retryable=False, final=True))
        await _drop_working_objects(self._objects, message)

    async def _publish(self, message: VideoChunk | ChunkDone, event: Any) -> None:
        await self._publisher.publish(
            event, environment=message.environment, workflow=message.workflow
        )


class ChunkWorker(_VideoLoop):
    """Swaps chunks (see the module's docstring)."""

    durable = VIDEO_CHUNKS_CONSUMER
    what = "video chunk"

    def __init__(
        self,
        nc: Client,
        settings: FaceSwapSettings,
        engines: EngineCatalog,
        worker_id: str,
    ) -> None:
        super().__init__(nc, settings, concurrency=settings.video.chunk_concurrency)
        self._engines = engines
        self._worker_id = worker_id
        self._retry: RetryPolicy = settings.bus.retry_policy()
        self._inputs: _Recent[bytes] = _Recent()
        self._probes: _Recent[VideoInfo] = _Recent()

    async def process(self, msg: Msg) -> None:
        chunk = msgspec.json.decode(msg.data, type=VideoChunk)
        delivery = msg.metadata.num_delivered
        events = TaskEvents(chunk.task_id, chunk.attempt, utcnow)
        await self._open()
        if await self._ended(chunk, events):
            await msg.ack()
            return
        label = chunk.chunk.label
        if delivery > self._settings.bus.max_deliver:  # its workers kept dying
            await self._fail(
                chunk,
                events,
                "chunk_exhausted",
                f"{label}: no worker finished this chunk in {delivery - 1} attempts",
            )
            await msg.term()
            return
        try:
            with self._keep_alive(msg):
                segment, with_faces = await self._swap(chunk, events)
        except _Stopped:
            await self._ended(chunk, events)
            await msg.ack()
            return
        except PixelbusError as exc:
            settle = after_failure(
                self._retry,
                delivery,
                retryable=exc.retryable,
                draw=random.random(),
                asked_delay_s=exc.delay_s,
            )
            if settle.final:
                await self._fail(chunk, events, exc.code, f"{label}: {exc.message}")
                await msg.term()
            else:
                await msg.nak(delay=settle.delay_s)
            return
        name = chunk_object(chunk.task_id, chunk.chunk.index)
        await self._objects.put(name, segment)
        done = ChunkDone(
            task_id=chunk.task_id,
            environment=chunk.environment,
            workflow=chunk.workflow,
            attempt=chunk.attempt,
            chunk=chunk.chunk,
            chunks=chunk.chunks,
            frames_total=chunk.frames_total,
            segment_object=name,
            frames_with_faces=with_faces,
            worker=self._worker_id,
        )
        await self._js.publish(
            chunk_done_subject(chunk.task_id, chunk.chunk.index),
            msgspec.json.encode(done),
            headers={"Nats-Msg-Id": f"{chunk.task_id}:done:{chunk.chunk.index}"},
        )
        await msg.ack()

    async def _swap(self, chunk: VideoChunk, events: TaskEvents) -> tuple[bytes, int]:
        source_bytes, target = await asyncio.gather(
            self._input(chunk.source_object), self._input(chunk.target_object)
        )
        limits = video_limits(self._settings)
        info = await self._probes.get(
            chunk.target_object, lambda: asyncio.to_thread(probe_video, target, limits)
        )
        try:
            options, _ = parse_options(chunk.options)
        except ValueError as exc:
            raise Permanent("invalid_input", str(exc)) from exc
        stop = threading.Event()
        counts = [0, 0]
        settings = self._settings
        engines = self._engines

        def work() -> bytes:
            engine = resolve_engine(engines, chunk.model)
            source = decode_image(
                source_bytes,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            )
            first, last = chunk.chunk.first_pts, chunk.chunk.last_pts
            frames = decode_frames(target, first, last)
            swapped = swap_frames(frames, source, engine, options, stop, counts)
            return encode_segment(swapped, info, chunk.output_format)  # type: ignore[arg-type]

        follower = asyncio.create_task(self._follow(chunk, events, stop, counts))
        try:
            segment = await asyncio.to_thread(work)
        except NoFaceFound as exc:
            raise Permanent("no_source_face", str(exc)) from exc
        finally:
            follower.cancel()
        if stop.is_set():
            raise _Stopped
        if counts[0] != chunk.chunk.frames:
            raise Permanent(
                "invalid_video",
                f"{counts[0]} of the chunk's {chunk.chunk.frames} frames could be decoded",
            )
        return segment, counts[1]

    async def _input(self, name: str) -> bytes:
        return await self._inputs.get(name, lambda: self._reader.read(name))

    async def _follow(
        self, chunk: VideoChunk, events: TaskEvents, stop: threading.Event, counts: list[int]
    ) -> None:
        """While the chunk is swapped: report its frames so far every video progress
        interval, and stop it when its task gets a cancel request or ends meanwhile. A failed report
        or read is left for the next round (the swap goes on)."""
        assert self._state is not None
        interval = self._settings.video.progress_interval_s
        reported = 0
        next_check = time.monotonic() + _CANCEL_CHECK_S
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                if counts[0] > reported:
                    await self._report(chunk, events, counts[0])
                    reported = counts[0]
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + _CANCEL_CHECK_S
                    state, _ = await read_state(self._state, chunk.task_id)
                    if before_run(state) is not Before.RUN:
                        stop.set()
                        return

    async def _report(self, chunk: VideoChunk, events: TaskEvents, frames: int) -> None:
        assert self._jobs is not None
        index = chunk.chunk.index
        update = await update_job(
            self._jobs, chunk.task_id, lambda counts: counts.with_partial(index, frames)
        )
        if update is not None and update.changed:
            progress = frames_progress(events, update.record.counts, update.revision)
            await self._publish(chunk, progress)


class Assembler(_VideoLoop):
    """Counts chunks and joins them (see the module's docstring)."""

    durable = VIDEO_ASSEMBLER_CONSUMER
    what = "swapped video chunk"

    def __init__(self, nc: Client, settings: FaceSwapSettings) -> None:
        super().__init__(nc, settings, concurrency=4)

    async def process(self, msg: Msg) -> None:
        done = msgspec.json.decode(msg.data, type=ChunkDone)
        await self._open()
        assert self._jobs is not None
        events = TaskEvents(done.task_id, done.attempt, utcnow)
        update = await update_job(self._jobs, done.task_id, lambda counts: counts.with_chunk(done))
        if update is None:
            log.warning("a chunk of an unknown video job", task_id=done.task_id)
        if update is None or update.record.counts.assembled:
            await msg.ack()
            return
        record, revision = update.record, update.revision
        await self._publish(done, frames_progress(events, record.counts, revision))
        if record.counts.complete:
            with self._keep_alive(msg):
                await self._finish(done, record, events)
            await self._mark_assembled(done.task_id, record, revision)
        await msg.ack()

    async def _finish(self, done: ChunkDone, record: JobRecord, events: TaskEvents) -> None:
        if await self._ended(done, events):
            return
        counts, job = record.counts, record.job
        if counts.frames_with_faces == 0:
            await self._fail(
                done,
                events,
                "no_face_found",
                f"no face was found in any of the target video's {counts.frames_total} frames",
            )
            return
        names = [chunk_object(done.task_id, index) for index in range(counts.chunks)]
        segments = [await self._reader.read(name) for name in names]
        original = await self._reader.read(job.target_object)
        video_format: VideoFormat = "webm" if job.output_format == "webm" else "mp4"
        limits = video_limits(self._settings)

        def join() -> tuple[bytes, VideoInfo]:
            info = probe_video(original, limits)
            return assemble(segments, original, info, video_format), info

        data, info = await asyncio.to_thread(join)
        output = OutputFile(f"result.{video_format}", data, _CONTENT_TYPES[video_format])
        outputs = await pack_outputs(
            self._objects, done.task_id, [output], self._settings.bus.inline_output_bytes
        )
        result = {
            "width": info.width,
            "height": info.height,
            "frames": info.frames,
            "fps": round(float(info.average_rate), 3),
            "duration_s": round(info.duration_s, 3),
            "format": video_format,
            "model": job.model,
            "chunks": counts.chunks,
            "frames_with_faces": counts.frames_with_faces,
            "workers": len(counts.workers),
        }
        working = (job.source_object, job.target_object, *names, *job.input_objects)
        await self._publish(done, events.outputs(outputs, result, working))

    async def _mark_assembled(self, task_id: str, record: JobRecord, revision: int) -> None:
        assert self._jobs is not None
        counts = msgspec.structs.replace(record.counts, assembled=True)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._jobs.update(
                task_id,
                msgspec.json.encode(JobRecord(counts=counts, job=record.job)),
                last=revision,
            )


@dataclass(frozen=True, slots=True)
class VideoFanOut:
    """A worker's part of the video fan-out: the splitter its handler uses, and the
    chunk and assembler loops it runs beside its task pool."""

    splitter: VideoSplitter
    chunks: ChunkWorker
    assembler: Assembler

    async def run(self) -> None:
        await asyncio.gather(self.chunks.run(), self.assembler.run())

    def stop(self) -> None:
        self.chunks.stop()
        self.assembler.stop()


async def open_video(
    nc: Client, settings: FaceSwapSettings, engines: EngineCatalog, worker_id: str
) -> VideoFanOut:
    """Provision the video stream, consumers and bucket; the worker's fan-out parts."""
    js = nc.jetstream()
    await ensure_video(js, settings.bus)
    objects = await js.object_store(OUTPUTS_BUCKET)
    return VideoFanOut(
        splitter=VideoSplitter(nc, settings, objects),
        chunks=ChunkWorker(nc, settings, engines, worker_id),
        assembler=Assembler(nc, settings),
    )
