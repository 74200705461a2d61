"""The task lifecycle, in one place for every consumer (pure: no I/O, the clock and the
random draw passed in).

Workers, the storage uploader, the external-consumer routes and the exhausted-task watcher
all answer the same questions the same way:

- ``before_run(state)``: may a delivered task run? A task already final is skipped (acked),
  one with a cancel request is cancelled (``TaskCancelled`` recorded, acked);
- ``after_failure(policy, attempt, retryable=...)``: is this failure the task's last
  (``TaskFailed(final)`` and term) or is the message handed back, and after how long?
- ``RetryPolicy.delay_s``: the one backoff of pixelbus, exponential with jitter;
- ``TaskEvents``: the events of one attempt, ids and timestamps filled in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pixelbus.contracts.events import (
    OutputsReady,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    event_id,
)
from pixelbus.contracts.task import OutputObject, TaskState

__all__ = [
    "Before",
    "RetryPolicy",
    "Settle",
    "TaskEvents",
    "after_failure",
    "before_run",
]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: the wait after the ``n``-th failure is
    ``base_s·2^(n-1)`` capped at ``max_s``, scaled by a draw in [0, 1) into [½, 1) of that
    (so that consumers failing together do not come back together). ``max_attempts``:
    tries in all."""

    base_s: float
    max_s: float = 60.0
    max_attempts: int = 5

    def delay_s(self, failures: int, draw: float) -> float:
        ceiling = min(self.max_s, self.base_s * 2.0 ** max(0, failures - 1))
        return ceiling * (0.5 + draw / 2)


class Before(enum.Enum):
    """What a consumer does with a delivered task before working on it."""

    RUN = "run"
    SKIP = "skip"  # already final: ack, nothing else
    CANCEL = "cancel"  # a cancel request was seen: record TaskCancelled, ack


def before_run(state: TaskState | None) -> Before:
    if state is None:
        return Before.RUN
    if state.is_final:
        return Before.SKIP
    return Before.CANCEL if state.cancel_requested else Before.RUN


@dataclass(frozen=True)
class Settle:
    """A failed attempt's fate: ``final`` (``TaskFailed(final)``, term) or handed back
    (``TaskFailed(retryable)``, nak after ``delay_s``)."""

    final: bool
    delay_s: float = 0.0


def after_failure(
    policy: RetryPolicy,
    attempt: int,
    *,
    retryable: bool,
    draw: float,
    asked_delay_s: float | None = None,
) -> Settle:
    """``attempt`` counts from 1; a retryable failure on the last allowed attempt is final.
    ``asked_delay_s``: the wait the error itself asked for (e.g. a ``Retry-After``)."""
    if not retryable or attempt >= policy.max_attempts:
        return Settle(final=True)
    delay = asked_delay_s if asked_delay_s is not None else policy.delay_s(attempt, draw)
    return Settle(final=False, delay_s=delay)


@dataclass(frozen=True)
class TaskEvents:
    """The events of one attempt of a task, with their deterministic ids and the time."""

    task_id: str
    attempt: int
    now: Callable[[], datetime]

    def started(self, worker: str) -> TaskStarted:
        return TaskStarted(
            event_id=event_id(self.task_id, "started", self.attempt),
            task_id=self.task_id,
            occurred_at=self.now(),
            attempt=self.attempt,
            worker=worker,
        )

    def progress(
        self,
        seq: int,
        fraction: float | None,
        node: str | None,
        message: str | None,
        *,
        frames: tuple[int, int] | None = None,
    ) -> TaskProgress:
        """``frames``: a video task's (frames done, frames in all)."""
        return TaskProgress(
            event_id=event_id(self.task_id, "progress", self.attempt, seq),
            task_id=self.task_id,
            occurred_at=self.now(),
            attempt=self.attempt,
            fraction=fraction,
            node=node,
            message=message,
            frames_done=None if frames is None else frames[0],
            frames_total=None if frames is None else frames[1],
        )

    def outputs(
        self,
        outputs: Sequence[OutputObject],
        result: dict[str, Any] | None,
        input_objects: Sequence[str] = (),
    ) -> OutputsReady:
        return OutputsReady(
            event_id=event_id(self.task_id, "outputs", self.attempt),
            task_id=self.task_id,
            occurred_at=self.now(),
            attempt=self.attempt,
            outputs=tuple(outputs),
            result=result,
            input_objects=tuple(input_objects),
        )

    def completed(self, outputs: Sequence[Any], result: dict[str, Any] | None) -> TaskCompleted:
        return TaskCompleted(
            event_id=event_id(self.task_id, "completed"),
            task_id=self.task_id,
            occurred_at=self.now(),
            attempt=self.attempt,
            outputs=tuple(outputs),
            result=result,
        )

    def failed(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        final: bool,
        upload_attempt: int | None = None,
    ) -> TaskFailed:
        """``upload_attempt``: a failure of the uploader, whose attempts count apart from
        the worker's (the task's ``attempt``)."""
        tries = self.attempt if upload_attempt is None else upload_attempt
        kind = "failed" if upload_attempt is None else "upload-failed"
        if retryable and final:  # a retryable failure that ends the task says so
            message = f"{message} (gave up after {tries} attempts)"
        return TaskFailed(
            event_id=event_id(self.task_id, kind, tries, final=final),
            task_id=self.task_id,
            occurred_at=self.now(),
            attempt=self.attempt,
            code=code,
            message=message,
            retryable=retryable,
            final=final,
        )

    def cancelled(self, reason: str | None) -> TaskCancelled:
        return TaskCancelled(
            event_id=event_id(self.task_id, "cancelled"),
            task_id=self.task_id,
            occurred_at=self.now(),
            reason=reason,
        )
