"""The fold: order-safe, idempotent, never leaves a final state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

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
from pixelbus.contracts.fold import INLINE_INPUT_BYTES, apply, fold
from pixelbus.contracts.task import (
    FINAL_STATUSES,
    OutputObject,
    StoredOutput,
    TaskState,
    TaskStatus,
)
from pixelbus.contracts.views import task_view

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TASK = "task_1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def created(t: float = 0) -> TaskCreated:
    return TaskCreated(
        event_id=event_id(TASK, "created"),
        task_id=TASK,
        occurred_at=at(t),
        workflow="face_swap",
        environment="face_swap",
        input_data={"wf_json": {"source_url": "https://a/s.jpg", "target_url": "https://a/t.jpg"}},
    )


def started(attempt: int, t: float) -> TaskStarted:
    return TaskStarted(
        event_id=event_id(TASK, "started", attempt),
        task_id=TASK,
        occurred_at=at(t),
        attempt=attempt,
        worker=f"w{attempt}",
    )


def progress(attempt: int, seq: int, t: float) -> TaskProgress:
    return TaskProgress(
        event_id=event_id(TASK, "progress", attempt, seq),
        task_id=TASK,
        occurred_at=at(t),
        attempt=attempt,
        fraction=min(1.0, seq / 10),
        node="swap",
    )


def completed(t: float) -> TaskCompleted:
    out = StoredOutput(
        filename="result.png",
        content_type="image/png",
        size=10,
        url="http://x/result.png",
        key="tasks/task_1/result.png",
        provider="local",
    )
    return TaskCompleted(
        event_id=event_id(TASK, "completed"), task_id=TASK, occurred_at=at(t), outputs=(out,)
    )


def failed(attempt: int, t: float, *, final: bool) -> TaskFailed:
    return TaskFailed(
        event_id=event_id(TASK, "failed", attempt, final=final),
        task_id=TASK,
        occurred_at=at(t),
        attempt=attempt,
        code="timeout" if not final else "no_face",
        message="boom",
        retryable=not final,
        final=final,
    )


def test_happy_path_walks_pending_processing_completed() -> None:
    state = apply(None, created())
    assert state.status is TaskStatus.PENDING
    assert state.workflow == "face_swap"
    state = apply(state, started(1, 1))
    assert state.status is TaskStatus.PROCESSING
    assert state.attempts == 1 and state.worker == "w1"
    state = apply(state, progress(1, 5, 2))
    assert state.progress is not None and state.progress.fraction == 0.5
    state = apply(state, completed(3))
    assert state.status is TaskStatus.COMPLETED
    assert state.outputs[0].url == "http://x/result.png"
    assert state.finished_at == at(3)


def test_late_progress_after_completion_changes_nothing_visible() -> None:
    done = fold([created(), started(1, 1), completed(3)])
    late = apply(done, progress(1, 9, 4))
    assert late is not None and late.status is TaskStatus.COMPLETED
    assert late.outputs == done.outputs  # type: ignore[union-attr]


def test_retry_goes_back_to_pending_then_processing() -> None:
    state = fold([created(), started(1, 1), failed(1, 2, final=False)])
    assert state is not None and state.status is TaskStatus.PENDING
    assert state.last_error is not None and state.last_error.code == "timeout"
    state = apply(state, started(2, 3))
    assert state.status is TaskStatus.PROCESSING and state.attempts == 2


def test_final_failure_records_the_error() -> None:
    state = fold([created(), started(1, 1), failed(1, 2, final=True)])
    assert state is not None and state.status is TaskStatus.FAILED
    assert state.error is not None and state.error.code == "no_face"


def test_cancel_request_then_cancelled() -> None:
    request = TaskCancelRequested(
        event_id=event_id(TASK, "cancel_requested"), task_id=TASK, occurred_at=at(1), reason="user"
    )
    cancelled = TaskCancelled(event_id=event_id(TASK, "cancelled"), task_id=TASK, occurred_at=at(2))
    state = fold([created(), request])
    assert state is not None and state.cancel_requested and state.status is TaskStatus.PENDING
    state = apply(state, cancelled)
    assert state.status is TaskStatus.CANCELLED


def test_conflicting_finals_first_wins_in_any_order() -> None:
    cancelled = TaskCancelled(event_id=event_id(TASK, "cancelled"), task_id=TASK, occurred_at=at(5))
    events: list[AnyEvent] = [created(), started(1, 1), completed(4), cancelled]
    forward = fold(events)
    backward = fold(reversed(events))
    assert forward == backward
    assert forward is not None and forward.status is TaskStatus.COMPLETED


def test_event_of_another_task_is_refused() -> None:
    state = apply(None, created())
    other = TaskStarted(event_id="x", task_id="other", occurred_at=at(1), attempt=1, worker="w")
    try:
        apply(state, other)
    except ValueError as exc:
        assert "other" in str(exc)
    else:
        raise AssertionError("an event of another task was folded in")


def test_outputs_ready_means_processing() -> None:
    ready = OutputsReady(
        event_id=event_id(TASK, "outputs", 1),
        task_id=TASK,
        occurred_at=at(2),
        attempt=1,
        outputs=(
            OutputObject(object_name="o", filename="r.png", content_type="image/png", size=1),
        ),
    )
    state = fold([created(), ready])
    assert state is not None and state.status is TaskStatus.PROCESSING


@st.composite
def histories(draw: st.DrawFn) -> list[AnyEvent]:
    """A plausible ordered history of one task: created, attempts, one final outcome."""
    t = 0.0
    events: list[AnyEvent] = [created(t)]
    attempts = draw(st.integers(min_value=0, max_value=3))
    for attempt in range(1, attempts + 1):
        t += draw(st.floats(min_value=0.001, max_value=5))
        events.append(started(attempt, t))
        for seq in range(draw(st.integers(min_value=0, max_value=4))):
            t += 0.01
            events.append(progress(attempt, seq, t))
        if attempt < attempts:
            t += 0.01
            events.append(failed(attempt, t, final=False))
    if draw(st.booleans()):
        t += 0.5
        events.append(
            TaskCancelRequested(
                event_id=event_id(TASK, "cancel_requested"), task_id=TASK, occurred_at=at(t)
            )
        )
    outcome = draw(st.sampled_from(["completed", "failed", "cancelled", "none"]))
    t += 1
    if outcome == "completed":
        events.append(completed(t))
    elif outcome == "failed":
        events.append(failed(max(attempts, 1), t, final=True))
    elif outcome == "cancelled":
        events.append(
            TaskCancelled(event_id=event_id(TASK, "cancelled"), task_id=TASK, occurred_at=at(t))
        )
    return events


@settings(max_examples=300, deadline=None)
@given(data=st.data(), history=histories())
def test_any_reordering_or_duplication_folds_to_the_same_state(
    data: st.DataObject, history: list[AnyEvent]
) -> None:
    expected = fold(history)
    with_duplicates = history + data.draw(st.lists(st.sampled_from(history), max_size=10))
    shuffled = data.draw(st.permutations(with_duplicates))
    state: TaskState | None = None
    final_seen = False
    for event in shuffled:
        state = apply(state, event)
        if state.status in FINAL_STATUSES:
            final_seen = True
        else:
            assert not final_seen, "a final state was left"
    assert state == expected


def test_a_large_input_is_kept_by_size_and_digest_only() -> None:
    graph = {str(n): {"class_type": "Node", "inputs": {"text": "x" * 40}} for n in range(200)}
    big = msgspec.structs.replace(created(), workflow="w", environment="comm",
                                  input_data={"wf_json": graph})  # fmt: skip
    encoded = msgspec.json.encode(big.input_data)
    assert len(encoded) > INLINE_INPUT_BYTES
    state = fold([big])
    assert state is not None and state.input_data is None
    assert state.input_bytes == len(encoded)
    assert state.input_digest == hashlib.sha256(encoded).hexdigest()
    view = task_view(state)
    assert view["params"] == {
        "input_data": {},
        "input_omitted": {"bytes": len(encoded), "sha256": state.input_digest},
    }
    assert task_view(state, input_data=big.input_data)["params"] == {"input_data": big.input_data}
    small = fold([created()])
    assert small is not None and small.input_data == created().input_data
    assert "input_omitted" not in task_view(small)["params"]
