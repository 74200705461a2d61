"""Pure rules of the projector service: the planning horizon, what a task's webhook asks
for, and the settings (a bad one stops the process with one line naming it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from pixelbus.contracts.events import TaskCreated, TaskFailed, TaskStarted
from pixelbus.contracts.fold import apply
from pixelbus.contracts.webhooks import plan_job, webhook_target
from pixelbus.projector.planner import planning_horizon, recent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_horizon_keeps_a_margin_inside_the_duplicate_window() -> None:
    assert planning_horizon(600) == timedelta(seconds=590)
    assert planning_horizon(4) == timedelta(seconds=2)  # at most half of a short window
    horizon = planning_horizon(600)
    assert recent(NOW - timedelta(seconds=589), NOW, horizon)
    assert not recent(NOW - timedelta(seconds=590), NOW, horizon)


def test_a_job_only_for_what_the_task_asked() -> None:
    created = TaskCreated(
        event_id="t:created", task_id="t", occurred_at=NOW, workflow="probe",
        environment="face_swap", input_data={}, owner="acme",
        webhook_url="https://hooks.example.com/x", webhook_events=("failed",),
    )  # fmt: skip
    target = webhook_target(created)
    assert target is not None and target.owner == "acme"
    state = apply(None, created)
    started = TaskStarted(event_id="t:started:1", task_id="t", occurred_at=NOW, worker="w")
    retry = TaskFailed(
        event_id="t:failed:1", task_id="t", occurred_at=NOW, code="x", message="m",
        retryable=True, final=False,
    )  # fmt: skip
    final = TaskFailed(
        event_id="t:failed:final", task_id="t", occurred_at=NOW, code="x", message="m",
        retryable=True, final=True,
    )  # fmt: skip
    assert plan_job(target, started, apply(state, started), now=NOW) is None  # not asked
    assert plan_job(target, retry, apply(state, retry), now=NOW) is None  # not a webhook
    job = plan_job(target, final, apply(state, final), now=NOW)
    assert job is not None and (job.event, job.delivery_id) == ("failed", "t:failed:final")
    assert json.loads(job.body)["data"]["status"] == "FAILED"
    plain = TaskCreated(
        event_id="p:created", task_id="p", occurred_at=NOW, workflow="probe",
        environment="face_swap", input_data={},
    )  # fmt: skip
    assert webhook_target(plain) is None


@pytest.mark.servers  # the projector as a child process
def test_a_bad_setting_stops_the_projector_with_one_line() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIXELBUS_")}
    done = subprocess.run(
        [sys.executable, "-m", "pixelbus.projector"],
        env={**clean, "NATS_URL": "nats://127.0.0.1:1", "PIXELBUS_PROJECTOR_BATCH": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pixelbus-projector: PIXELBUS_PROJECTOR_BATCH=0 is out of range [1, 10000]"
    ]
