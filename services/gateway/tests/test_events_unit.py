"""What a live-progress follower sends (pure), and the SSE framing."""

from __future__ import annotations

from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.gateway.follow import Emission, task_events_filter
from pixelbus.gateway.sse import comment, message, parse_last_event_id

PENDING = TaskState(task_id="t")
RUNNING = TaskState(task_id="t", status=TaskStatus.PROCESSING)
DONE = TaskState(task_id="t", status=TaskStatus.COMPLETED)


def run(emission: Emission, events: list[tuple[int, TaskState, int]]) -> list[int]:
    sent = []
    for seq, state, pending in events:
        if emission.on_event(seq, state, pending):
            sent.append(seq)
        if emission.done:
            break
    return sent


def test_without_resume_point_the_caught_up_state_then_every_later_one() -> None:
    emission = Emission()
    assert run(emission, [(3, PENDING, 2), (7, RUNNING, 1), (9, RUNNING, 0)]) == [9]
    assert run(emission, [(12, RUNNING, 0), (15, DONE, 0), (16, DONE, 0)]) == [12, 15]
    assert emission.done


def test_resume_sends_every_state_after_the_last_seen_one() -> None:
    emission = Emission(after=7)
    assert run(emission, [(3, PENDING, 3), (7, RUNNING, 2), (9, RUNNING, 1), (15, DONE, 0)]) == [
        9,
        15,
    ]
    assert emission.done


def test_resume_after_the_final_state_sends_nothing_and_ends() -> None:
    emission = Emission(after=15)
    assert run(emission, [(3, PENDING, 1), (15, DONE, 0)]) == []
    assert emission.done


def test_a_final_state_before_catching_up_does_not_end_the_replay_early() -> None:
    emission = Emission(after=0)
    assert run(emission, [(3, PENDING, 2), (15, DONE, 1), (16, DONE, 0)]) == [3, 15, 16]


def test_sse_framing() -> None:
    assert message('{"a": 1}', event="state", id=5) == b'id: 5\nevent: state\ndata: {"a": 1}\n\n'
    assert message("x\ny") == b"data: x\ndata: y\n\n"
    assert comment("ping") == b": ping\n\n"
    assert [parse_last_event_id(v) for v in (None, "", "12", " 7 ", "abc", "-1")] == [
        None,
        None,
        12,
        7,
        None,
        None,
    ]
    assert task_events_filter("task_1") == "pixelbus.tasks.*.*.*.task_1"
