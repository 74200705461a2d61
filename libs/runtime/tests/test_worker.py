"""The worker runtime against a real nats-server, seen only from the outside: the events it
publishes on the task stream and what the pool's durable consumer says about each message
(acked, terminated, redelivered).

The pool's lease (ack wait) is 60 s here, far longer than any wait of these tests, so a
message that comes back within a test was released by the worker (a nak), never by its
lease running out. A ``term`` is seen as the server's ``MSG_TERMINATED`` advisory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from pixelbus.contracts.events import (
    AnyEvent,
    OutputsReady,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    event_id,
)
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import (
    OUTPUTS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    pool_for_environment,
    task_subject,
)
from pixelbus.runtime.errors import Permanent, Retryable
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import encode_state
from pixelbus.runtime.worker import (
    Handler,
    OutputFile,
    TaskContext,
    TaskResult,
    WorkerRuntime,
)
from pixelbus.testkit.waiting import EventLog, eventually

ENV = "face_swap"
POOL = pool_for_environment(ENV)
SETTINGS = BusSettings(
    max_deliver=2,
    retry_delay_s=0.0,  # a released task comes back at once
    progress_interval_s=0.0,
    inline_output_bytes=1024,
    pool_ack_wait_s=((POOL.name, 60.0),),
)
TERMINATED = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASK_STREAM}.{POOL.durable}"


class Bus:
    """A provisioned nats-server, every task event published on it, the pool's terms."""

    def __init__(self, nc: Client, events: EventLog) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.events = events
        self.terminated: list[int] = []  # stream sequences the pool's consumer terminated
        self.publisher = EventPublisher(self.js)
        self.workers: list[tuple[WorkerRuntime, asyncio.Task[None]]] = []
        self._count = 0

    async def start_worker(
        self, handlers: dict[str, Handler], *, grace_s: float = 5.0
    ) -> WorkerRuntime:
        runtime = WorkerRuntime(
            nc=self.nc,
            js=self.js,
            pool=POOL,
            handlers=handlers,
            settings=SETTINGS,
            concurrency=2,
            grace_s=grace_s,
        )
        task = asyncio.create_task(runtime.run())
        self.workers.append((runtime, task))
        await asyncio.wait_for(runtime.wait_ready(), 10)
        return runtime

    async def stop_worker(self, runtime: WorkerRuntime) -> None:
        runtime.stop()
        task = next(task for worker, task in self.workers if worker is runtime)
        await asyncio.wait_for(task, 15)

    async def create(self, workflow: str) -> tuple[TaskCreated, int]:
        """A new task of ``workflow``; its ``TaskCreated`` and stream sequence."""
        self._count += 1
        task_id = f"task-{self._count}"
        created = TaskCreated(
            event_id=event_id(task_id, "created"),
            task_id=task_id,
            occurred_at=datetime.now(UTC),
            workflow=workflow,
            environment=ENV,
            input_data={"wf_json": {"n": self._count}},
        )
        ack = await self.publisher.publish(created, environment=ENV, workflow=workflow)
        return created, ack.seq

    async def request_cancel(self, created: TaskCreated, reason: str) -> None:
        await self.publisher.publish(
            TaskCancelRequested(
                event_id=event_id(created.task_id, "cancel_requested"),
                task_id=created.task_id,
                occurred_at=datetime.now(UTC),
                reason=reason,
            ),
            environment=ENV,
            workflow=created.workflow,
        )

    async def wait_event(
        self, task_id: str, kind: type[AnyEvent], check: Callable[[AnyEvent], bool] = bool
    ) -> AnyEvent:
        return await self.events.wait_for(
            lambda e: e.task_id == task_id and isinstance(e, kind) and check(e)
        )

    async def wait_settled(self, seq: int) -> None:
        """Until the pool's consumer holds the message at ``seq`` done (acked or
        terminated): its ack floor passed it and nothing is pending an ack."""

        async def settled() -> bool | None:
            info = await self.js.consumer_info(TASK_STREAM, POOL.durable)
            done = info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0
            return True if done else None

        await eventually(settled)
        await self.nc.flush()  # a term's advisory, if any, has reached us

    async def wait_terminated(self, seq: int) -> None:
        async def seen() -> bool | None:
            return True if seq in self.terminated else None

        await eventually(seen)


@pytest.fixture
async def bus(nc: Client) -> AsyncIterator[Bus]:
    await ensure(nc.jetstream(), SETTINGS)
    events = await EventLog.open(nc)
    running = Bus(nc, events)

    async def on_terminated(msg: Msg) -> None:
        running.terminated.append(json.loads(msg.data)["stream_seq"])

    await nc.subscribe(TERMINATED, cb=on_terminated)
    await nc.flush()
    try:
        yield running
    finally:
        for runtime, task in running.workers:
            runtime.stop()
            await asyncio.wait_for(task, 15)


def returning(
    result: TaskResult, attempts: list[int] | None = None
) -> Callable[[TaskContext], Awaitable[TaskResult]]:
    async def handler(ctx: TaskContext) -> TaskResult:
        if attempts is not None:
            attempts.append(ctx.attempt)
        return result

    return handler


class Hanging:
    """A handler that runs until it is cancelled, and says when it started and ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.attempts: list[int] = []

    async def __call__(self, ctx: TaskContext) -> TaskResult:
        self.attempts.append(ctx.attempt)
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("never reached")


async def test_success_publishes_started_progress_and_outputs_then_acks(bus: Bus) -> None:
    small = b'{"ok": true}'
    large = bytes(range(256)) * 8  # 2 KiB: over the 1 KiB inline budget

    async def swap(ctx: TaskContext) -> TaskResult:
        assert ctx.wf_json == ctx.input_data["wf_json"]
        await ctx.progress(0.5, message="half way")
        return TaskResult(
            outputs=[
                OutputFile("result.json", small, "application/json"),
                OutputFile("big image.png", large, "image/png", node_id="9"),
            ],
            result={"faces": 1},
        )

    worker = await bus.start_worker({"swap": swap})
    created, seq = await bus.create("swap")

    ready = await bus.wait_event(created.task_id, OutputsReady)
    await bus.wait_settled(seq)

    assert isinstance(ready, OutputsReady)
    started = bus.events.of(created.task_id, TaskStarted)
    assert [(e.attempt, e.worker) for e in started] == [(1, worker.worker_id)]
    progress = bus.events.of(created.task_id, TaskProgress)
    assert [(e.fraction, e.message) for e in progress] == [(0.5, "half way")]
    assert ready.attempt == 1 and ready.result == {"faces": 1}
    inline, stored = ready.outputs
    # The small output travels inside the event; the large one through the Object Store.
    assert (inline.filename, inline.data, inline.size) == ("result.json", small, len(small))
    assert (stored.filename, stored.data, stored.size) == ("big image.png", None, len(large))
    assert stored.node_id == "9"
    objects = await bus.js.object_store(OUTPUTS_BUCKET)
    assert (await objects.get(stored.object_name)).data == large
    subjects = [s for s, e in bus.events.events if isinstance(e, OutputsReady)]
    assert subjects == [task_subject(ENV, "swap", "outputs", created.task_id)]
    # Acked, not terminated; nothing failed.
    assert seq not in bus.terminated
    assert bus.events.of(created.task_id, TaskFailed) == []


async def test_probe_is_served_by_every_pool(bus: Bus) -> None:
    await bus.start_worker({})
    created, seq = await bus.create("probe")
    ready = await bus.wait_event(created.task_id, OutputsReady)
    await bus.wait_settled(seq)
    assert isinstance(ready, OutputsReady)
    (output,) = ready.outputs
    assert output.data is not None and json.loads(output.data)["task_id"] == created.task_id


async def test_permanent_failure_is_final_and_terminates(bus: Bus) -> None:
    attempts: list[int] = []

    async def no_face(ctx: TaskContext) -> TaskResult:
        attempts.append(ctx.attempt)
        raise Permanent("no_face", "no face in the source image")

    await bus.start_worker({"swap": no_face})
    created, seq = await bus.create("swap")

    failed = await bus.wait_event(created.task_id, TaskFailed)
    await bus.wait_terminated(seq)
    await bus.wait_settled(seq)

    assert isinstance(failed, TaskFailed)
    assert (failed.code, failed.retryable, failed.final, failed.attempt) == (
        "no_face",
        False,
        True,
        1,
    )
    assert "no face in the source image" in failed.message
    assert attempts == [1]  # never retried
    assert bus.events.of(created.task_id, OutputsReady) == []


async def test_retryable_failure_is_redelivered_then_final_once_attempts_are_spent(
    bus: Bus,
) -> None:
    attempts: list[int] = []

    async def flaky(ctx: TaskContext) -> TaskResult:
        attempts.append(ctx.attempt)
        raise Retryable("backend_gone", "the engine went away", delay_s=0)

    await bus.start_worker({"swap": flaky})
    created, seq = await bus.create("swap")

    await bus.wait_event(
        created.task_id, TaskFailed, lambda e: isinstance(e, TaskFailed) and e.final
    )
    await bus.wait_terminated(seq)
    await bus.wait_settled(seq)

    failures = bus.events.of(created.task_id, TaskFailed)
    assert sorted((f.attempt, f.code, f.retryable, f.final) for f in failures) == [
        (1, "backend_gone", True, False),
        (2, "backend_gone", True, True),  # SETTINGS.max_deliver == 2
    ]
    assert attempts == [1, 2]
    assert sorted(e.attempt for e in bus.events.of(created.task_id, TaskStarted)) == [1, 2]
    assert bus.events.of(created.task_id, OutputsReady) == []


async def test_retryable_failure_then_success_on_the_second_attempt(bus: Bus) -> None:
    attempts: list[int] = []

    async def flaky_once(ctx: TaskContext) -> TaskResult:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retryable("timeout", "upstream timed out", delay_s=0)
        return TaskResult(outputs=[OutputFile("a.txt", b"a", "text/plain")])

    await bus.start_worker({"swap": flaky_once})
    created, seq = await bus.create("swap")

    ready = await bus.wait_event(created.task_id, OutputsReady)
    await bus.wait_settled(seq)

    assert isinstance(ready, OutputsReady)
    assert ready.attempt == 2 and attempts == [1, 2]
    (failed,) = bus.events.of(created.task_id, TaskFailed)
    assert (failed.attempt, failed.retryable, failed.final) == (1, True, False)
    assert seq not in bus.terminated


async def test_an_unexpected_exception_is_retryable(bus: Bus) -> None:
    attempts: list[int] = []

    async def buggy_once(ctx: TaskContext) -> TaskResult:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ZeroDivisionError("boom")
        return TaskResult(outputs=[OutputFile("a.txt", b"a", "text/plain")])

    await bus.start_worker({"swap": buggy_once})
    created, seq = await bus.create("swap")

    ready = await bus.wait_event(created.task_id, OutputsReady)
    await bus.wait_settled(seq)

    (failed,) = bus.events.of(created.task_id, TaskFailed)
    assert (failed.attempt, failed.code, failed.retryable, failed.final) == (
        1,
        "internal_error",
        True,
        False,
    )
    assert "ZeroDivisionError" in failed.message and "boom" in failed.message
    assert ready.attempt == 2 and attempts == [1, 2]


async def test_a_cancel_request_cancels_the_running_handler(bus: Bus) -> None:
    hanging = Hanging()
    await bus.start_worker({"swap": hanging})
    created, seq = await bus.create("swap")
    await asyncio.wait_for(hanging.started.wait(), 10)

    await bus.request_cancel(created, "changed my mind")

    cancelled = await bus.wait_event(created.task_id, TaskCancelled)
    await bus.wait_settled(seq)

    assert isinstance(cancelled, TaskCancelled) and cancelled.reason == "changed my mind"
    assert hanging.cancelled.is_set() and hanging.attempts == [1]
    assert seq not in bus.terminated  # acked: the task ended, nothing to redeliver
    assert bus.events.of(created.task_id, TaskFailed) == []
    assert bus.events.of(created.task_id, OutputsReady) == []


async def test_a_redelivered_task_whose_state_is_final_is_acked_without_running(
    bus: Bus,
) -> None:
    """The first attempt fails retryably after the task was finished elsewhere (its state,
    written here as the projector would, is final): the redelivery reads it and acks."""
    attempts: list[int] = []
    state_kv = await bus.js.key_value(STATE_BUCKET)

    async def finished_elsewhere(ctx: TaskContext) -> TaskResult:
        attempts.append(ctx.attempt)
        completed = TaskCompleted(
            event_id=event_id(ctx.task_id, "completed"),
            task_id=ctx.task_id,
            occurred_at=datetime.now(UTC),
        )
        state = fold([ctx.created, completed])
        assert state is not None and state.is_final
        await state_kv.put(ctx.task_id, encode_state(state))
        raise Retryable("lost_race", "someone else finished it", delay_s=0)

    await bus.start_worker({"swap": finished_elsewhere})
    created, seq = await bus.create("swap")

    await bus.wait_event(created.task_id, TaskFailed)

    async def redelivered_and_settled() -> bool | None:
        info = await bus.js.consumer_info(TASK_STREAM, POOL.durable)
        delivered_twice = info.delivered.consumer_seq >= 2
        done = info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0
        return True if delivered_twice and done and info.num_redelivered == 0 else None

    await eventually(redelivered_and_settled)
    await bus.nc.flush()

    assert attempts == [1]  # the second delivery never reached the handler
    assert seq not in bus.terminated
    assert [e.attempt for e in bus.events.of(created.task_id, TaskStarted)] == [1]
    assert [(f.attempt, f.final) for f in bus.events.of(created.task_id, TaskFailed)] == [
        (1, False)
    ]


async def test_an_unknown_workflow_fails_permanently_naming_the_served_ones(bus: Bus) -> None:
    await bus.start_worker({"swap": returning(TaskResult(outputs=[]))})
    created, seq = await bus.create("no_such_flow")

    failed = await bus.wait_event(created.task_id, TaskFailed)
    await bus.wait_terminated(seq)

    assert isinstance(failed, TaskFailed)
    assert (failed.code, failed.retryable, failed.final) == ("unknown_workflow", False, True)
    assert "no_such_flow" in failed.message
    assert "probe" in failed.message and "swap" in failed.message
    assert bus.events.of(created.task_id, OutputsReady) == []


async def test_a_clean_stop_releases_in_flight_tasks_to_the_next_worker(bus: Bus) -> None:
    hanging = Hanging()
    first = await bus.start_worker({"swap": hanging}, grace_s=0.05)
    created, seq = await bus.create("swap")
    await asyncio.wait_for(hanging.started.wait(), 10)

    await bus.stop_worker(first)
    assert hanging.cancelled.is_set()  # the handler did not outlive its worker

    attempts: list[int] = []
    second = await bus.start_worker(
        {"swap": returning(TaskResult(outputs=[OutputFile("a", b"a", "text/plain")]), attempts)}
    )
    # Back within the wait below, far inside the 60 s lease: released by a nak.
    ready = await bus.wait_event(created.task_id, OutputsReady)
    await bus.wait_settled(seq)

    assert ready.attempt == 2 and attempts == [2]
    started = sorted((e.attempt, e.worker) for e in bus.events.of(created.task_id, TaskStarted))
    assert started == [(1, first.worker_id), (2, second.worker_id)]
    # Released, not failed or cancelled: the stop is no fault of the task.
    assert bus.events.of(created.task_id, TaskFailed) == []
    assert bus.events.of(created.task_id, TaskCancelled) == []
