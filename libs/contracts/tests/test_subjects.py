"""Task event subjects: ``parse_subject`` reads back what ``task_subject`` builds."""

from __future__ import annotations

import pytest

from pixelbus.contracts.subjects import (
    TaskSubject,
    parse_subject,
    task_subject,
)


def test_parse_reads_back_what_task_subject_builds() -> None:
    subject = task_subject("face_swap", "my.flow v2", "completed", "task_1")
    assert subject == "pixelbus.tasks.face_swap.my_flow_v2.completed.task_1"
    assert parse_subject(subject) == TaskSubject("face_swap", "my_flow_v2", "completed", "task_1")


def test_with_kind_names_the_same_tasks_other_event() -> None:
    parsed = parse_subject(task_subject("comfy", "upscale", "outputs", "t9"))
    assert parsed is not None
    assert parsed.with_kind("created") == task_subject("comfy", "upscale", "created", "t9")


@pytest.mark.parametrize(
    "subject",
    [
        "pixelbus.webhooks.jobs.t1",
        "pixelbus.tasks.face_swap.probe.created",  # a token short
        "pixelbus.tasks.face_swap.probe.created.t1.extra",
        "pixelbus.tasks..probe.created.t1",  # an empty token
        "other.tasks.face_swap.probe.created.t1",
        "",
    ],
)
def test_other_subjects_are_not_task_subjects(subject: str) -> None:
    assert parse_subject(subject) is None
