"""The task lifecycle as a table: (state seen, attempt, error kind) -> what a consumer does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.runtime.lifecycle import (
    Before,
    RetryPolicy,
    Settle,
    TaskEvents,
    after_failure,
    before_run,
)

AT = datetime(2026, 12, 5, tzinfo=UTC)
POLICY = RetryPolicy(base_s=2.0, max_s=10.0, max_attempts=3)


def state(status: TaskStatus, *, cancel_requested: bool = False) -> TaskState:
    return TaskState(task_id="t1", status=status, cancel_requested=cancel_requested)


@pytest.mark.parametrize(
    ("seen", "before"),
    [
        (None, Before.RUN),  # first delivery, nothing read
        (state(TaskStatus.PENDING), Before.RUN),
        (state(TaskStatus.PROCESSING), Before.RUN),  # a redelivery after a crash
        (state(TaskStatus.COMPLETED), Before.SKIP),
        (state(TaskStatus.FAILED), Before.SKIP),
        (state(TaskStatus.CANCELLED), Before.SKIP),
        (state(TaskStatus.PENDING, cancel_requested=True), Before.CANCEL),
        (state(TaskStatus.PROCESSING, cancel_requested=True), Before.CANCEL),
        (state(TaskStatus.COMPLETED, cancel_requested=True), Before.SKIP),  # too late
    ],
)
def test_before_run(seen: TaskState | None, before: Before) -> None:
    assert before_run(seen) is before


@pytest.mark.parametrize(
    ("attempt", "retryable", "asked", "draw", "settle"),
    [
        (1, False, None, 0.0, Settle(final=True)),  # permanent: at once
        (3, False, None, 0.0, Settle(final=True)),
        (1, True, None, 0.0, Settle(final=False, delay_s=1.0)),  # 2 s, jittered to half
        (1, True, None, 0.5, Settle(final=False, delay_s=1.5)),
        (2, True, None, 0.0, Settle(final=False, delay_s=2.0)),  # doubled
        (2, True, 7.0, 0.0, Settle(final=False, delay_s=7.0)),  # the error's own wait
        (3, True, None, 0.0, Settle(final=True)),  # the last allowed attempt
        (9, True, None, 0.0, Settle(final=True)),
    ],
)
def test_after_failure(
    attempt: int, retryable: bool, asked: float | None, draw: float, settle: Settle
) -> None:
    assert (
        after_failure(POLICY, attempt, retryable=retryable, draw=draw, asked_delay_s=asked)
        == settle
    )


def test_backoff_doubles_is_capped_and_jittered_into_its_upper_half() -> None:
    policy = RetryPolicy(base_s=1.0, max_s=6.0)
    assert [policy.delay_s(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay_s(3, 0.999999) == pytest.approx(4.0, rel=1e-5)


def test_events_carry_deterministic_ids_and_a_final_failure_says_it_gave_up() -> None:
    events = TaskEvents("t1", 2, lambda: AT)
    assert events.started("w").event_id == "t1:started:2"
    assert events.progress(4, 0.5, None, None).event_id == "t1:progress:2:4"
    assert events.completed((), None).event_id == "t1:completed"  # once per task
    assert events.cancelled("stop").event_id == "t1:cancelled"
    retry = events.failed("boom", "it broke", retryable=True, final=False)
    assert (retry.event_id, retry.message) == ("t1:failed:2", "it broke")
    last = events.failed("boom", "it broke", retryable=True, final=True)
    assert (last.event_id, last.message) == (
        "t1:failed:final",
        "it broke (gave up after 2 attempts)",
    )
    refused = events.failed("bad", "no face", retryable=False, final=True)
    assert refused.message == "no face"
    upload = events.failed("Slow", "throttled", retryable=True, final=False, upload_attempt=4)
    assert (upload.event_id, upload.attempt) == ("t1:upload-failed:4", 2)
    assert {e.occurred_at for e in (retry, last, upload)} == {AT}
