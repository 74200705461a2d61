"""The projector's compare-and-swap fold into the KV bucket, on a real nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.aio.client import Client

from pixelbus.contracts.events import TaskCompleted, TaskCreated, TaskProgress, TaskStarted
from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.contracts.task import TaskState
from pixelbus.projector.projector import StateCache, fold_into_kv
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CREATED = TaskCreated(
    event_id="t1:created", task_id="t1", occurred_at=NOW, workflow="probe",
    environment="face_swap", input_data={},
)  # fmt: skip
STARTED = TaskStarted(
    event_id="t1:started:1", task_id="t1", occurred_at=NOW + timedelta(seconds=1),
    attempt=1, worker="w",
)  # fmt: skip
PROGRESS = TaskProgress(
    event_id="t1:progress:1:1", task_id="t1", occurred_at=NOW + timedelta(seconds=2),
    attempt=1, fraction=0.5,
)  # fmt: skip
COMPLETED = TaskCompleted(
    event_id="t1:completed", task_id="t1", occurred_at=NOW + timedelta(seconds=3), attempt=1
)


async def test_a_stale_cached_state_is_re_read_not_written_over(nc: Client) -> None:
    """Projector A caches its write; B writes after it; A's next fold must not lose B's."""
    js = nc.jetstream()
    await ensure(js, BusSettings.from_env({}))
    kv = await js.key_value(STATE_BUCKET)
    cache_a = StateCache()
    await fold_into_kv(kv, "t1", [CREATED], cache_a)
    await fold_into_kv(kv, "t1", [STARTED], StateCache())  # replica B, its own cache
    await fold_into_kv(kv, "t1", [PROGRESS], cache_a)  # A's cache is one revision behind
    state, _ = await read_state(kv, "t1")
    assert state is not None and state.worker == "w" and state.progress is not None
    assert state.progress.fraction == 0.5


async def test_the_fold_says_where_it_started_and_ends_a_task_once(nc: Client) -> None:
    js = nc.jetstream()
    await ensure(js, BusSettings.from_env({}))
    kv = await js.key_value(STATE_BUCKET)
    first = await fold_into_kv(kv, "t1", [CREATED, STARTED])
    assert first.before is None and first.after.worker == "w" and not first.ended
    ending = await fold_into_kv(kv, "t1", [PROGRESS, COMPLETED])
    assert ending.before == first.after and ending.after.is_final and ending.ended
    _, revision = await read_state(kv, "t1")
    again = await fold_into_kv(kv, "t1", [STARTED, COMPLETED])  # a redelivered batch
    assert again.before == again.after == ending.after and not again.ended
    assert (await read_state(kv, "t1"))[1] == revision  # nothing written


def test_the_state_cache_is_bounded_in_bytes() -> None:
    cache = StateCache(max_bytes=1000)
    for n in range(10):
        cache.put(f"t{n}", TaskState(task_id=f"t{n}"), n + 1, 300)
    assert cache.bytes <= 1000 and len(cache) == 3
    assert cache.get("t9") is not None and cache.get("t0") is None
    cache.put("t9", TaskState(task_id="t9"), 11, 100)  # replaced, not added twice
    assert cache.bytes == 700 and cache.get("t9") == (TaskState(task_id="t9"), 11)
