"""Fault tests: processes die, the system does not lose or duplicate work."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import ServiceUnavailableError

from pixelbus.contracts.events import TaskCompleted, TaskStarted
from pixelbus.contracts.subjects import pool_for_environment
from pixelbus.contracts.task import TaskStatus
from pixelbus.projector.rebuild import read_all_events
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.worker import OutputFile, TaskContext, TaskResult, WorkerRuntime
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import EventLog, wait_for_state
from tests.conftest import data_uri
from tests.stack import Stack, running_stack, spawn_worker

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


async def test_kill_9_worker_holding_a_task_redelivers_and_completes_once(
    nats_server: NatsServer, tmp_path: Path, astronaut: Path, grace_hopper: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        events = await EventLog.open(stack.nc)
        doomed = spawn_worker(stack.env)
        survivor = None
        try:
            body = {
                "workflow": "face_swap",
                "params": {
                    "input_data": {
                        "wf_json": {
                            "source_url": data_uri(astronaut, "image/png"),
                            "target_url": data_uri(grace_hopper, "image/jpeg"),
                        }
                    }
                },
            }
            task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
            await events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == task_id, 60)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            survivor = spawn_worker(stack.env)
            final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 90)
            assert final.status is TaskStatus.COMPLETED
            assert final.attempts >= 2
            stored = await read_all_events(stack.nc)
            completions = [e for e in stored[task_id] if isinstance(e, TaskCompleted)]
            assert len(completions) == 1
        finally:
            for process in (doomed, survivor):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(15)


async def test_health_is_503_while_nats_is_down(nats_server: NatsServer, tmp_path: Path) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        assert (await stack.http.get("/api/health")).status_code == 200
        nats_server.kill()
        for _ in range(100):  # until the gateway's client has noticed the loss
            response = await stack.http.get("/api/health")
            if response.status_code == 503:
                break
            await asyncio.sleep(0.05)
        assert response.status_code == 503
        assert response.json()["nats"]["connected"] is False
        # A create while the bus is gone is a 503 to retry, never a 500.
        create = await stack.http.post(
            "/api/tasks/create", json={"workflow": "probe", "environment": "face_swap"}
        )
        assert create.status_code == 503 and create.headers["Retry-After"] == "2"
        assert "retry" in create.json()["detail"]
        nats_server.start()


def slow_workers(
    stack: Stack, runs: list[str], seconds: float, count: int, grace_s: float
) -> list[WorkerRuntime]:
    """``count`` face-swap-pool workers serving ``slow``: ``seconds`` of work per task."""

    async def slow(ctx: TaskContext) -> TaskResult:
        runs.append(ctx.task_id)
        await asyncio.sleep(seconds)  # the work itself
        return TaskResult(outputs=[OutputFile("slow.txt", b"done", "text/plain")])

    return [
        WorkerRuntime(
            nc=stack.nc,
            js=stack.nc.jetstream(),
            pool=pool_for_environment("face_swap"),
            handlers={"slow": slow},
            settings=BusSettings.from_env(stack.env),
            concurrency=1,
            grace_s=grace_s,
        )
        for _ in range(count)
    ]


SLOW = {"workflow": "slow", "environment": "face_swap"}
PROBE = {"workflow": "probe", "environment": "face_swap"}


async def test_a_task_five_times_longer_than_its_ack_wait_runs_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Long work keeps its lease by heartbeating: with a 0.5 s ack wait, a 2.5 s task on one
    of two workers is never handed to the other."""
    runs: list[str] = []
    async with running_stack(
        nats_server.url, tmp_path, worker=False, PIXELBUS_ACK_WAIT_S="0.5"
    ) as stack:
        workers = slow_workers(stack, runs, 2.5, count=2, grace_s=5)
        running = [asyncio.create_task(w.run()) for w in workers]
        try:
            task_id = (await stack.http.post("/api/tasks/create", json=SLOW)).json()["taskId"]
            final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*running), 15)
        assert final.status is TaskStatus.COMPLETED and final.attempts == 1
        assert runs == [task_id]
        stored = (await read_all_events(stack.nc))[task_id]
        assert len([e for e in stored if isinstance(e, TaskStarted)]) == 1
        assert len([e for e in stored if isinstance(e, TaskCompleted)]) == 1


async def test_a_stopping_worker_finishes_its_task_or_releases_it_at_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGTERM (``stop``) with a task in flight: within the grace period the task finishes
    there; past it, it is released (nak) and another worker takes it at once, long before
    the 30 s ack wait would have handed it out."""
    runs: list[str] = []
    async with running_stack(
        nats_server.url, tmp_path, worker=False, PIXELBUS_ACK_WAIT_S="30"
    ) as stack:
        events = await EventLog.open(stack.nc)

        async def stopped_mid_task(seconds: float, grace_s: float) -> str:
            """A task started on a worker of ``grace_s`` that is then stopped; its id."""
            [worker] = slow_workers(stack, runs, seconds, count=1, grace_s=grace_s)
            running = asyncio.create_task(worker.run())
            task_id = (await stack.http.post("/api/tasks/create", json=SLOW)).json()["taskId"]
            await events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == task_id, 10)
            worker.stop()
            await asyncio.wait_for(running, 15)
            return task_id

        finished = await stopped_mid_task(1.0, grace_s=10)
        done = await wait_for_state(await stack.kv(), finished, lambda s: s.is_final, 10)
        assert done.status is TaskStatus.COMPLETED and done.attempts == 1

        released = await stopped_mid_task(5.0, grace_s=0.2)
        [taker] = slow_workers(stack, runs, 0.1, count=1, grace_s=5)
        running = asyncio.create_task(taker.run())
        try:
            retaken = await events.wait_for(
                lambda e: isinstance(e, TaskStarted) and e.task_id == released and e.attempt == 2,
                10,  # a third of the ack wait: only a release gets it here this soon
            )
            assert retaken.worker == taker.worker_id
            final = await wait_for_state(await stack.kv(), released, lambda s: s.is_final, 10)
        finally:
            taker.stop()
            await asyncio.wait_for(running, 15)
        assert final.status is TaskStatus.COMPLETED and final.attempts == 2


async def test_cancel_of_a_running_task_stops_it_at_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A face-swap-pool task cancelled while it runs ends CANCELLED long before its work
    would have ended, with no completion; the worker is free for the next task."""
    runs: list[str] = []
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        events = await EventLog.open(stack.nc)
        [worker] = slow_workers(stack, runs, 30.0, count=1, grace_s=5)
        running = asyncio.create_task(worker.run())
        try:
            task_id = (await stack.http.post("/api/tasks/create", json=SLOW)).json()["taskId"]
            await events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == task_id, 10)
            began = asyncio.get_running_loop().time()
            answer = await stack.http.post(f"/api/tasks/{task_id}/cancel?reason=changed+my+mind")
            assert answer.status_code == 202, answer.text
            final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 10)
            assert asyncio.get_running_loop().time() - began < 10  # not the 30 s of work
            assert final.status is TaskStatus.CANCELLED
            assert worker.in_flight == 0
        finally:
            worker.stop()
            await asyncio.wait_for(running, 15)
        stored = (await read_all_events(stack.nc))[task_id]
        assert not [e for e in stored if isinstance(e, TaskCompleted)]


async def test_a_full_store_refuses_creates_at_once_and_recovers(tmp_path: Path) -> None:
    """JetStream out of storage: a create answers 503 with Retry-After at once (no hang,
    nothing accepted), every task accepted before completes, and creates work again once
    space returns."""
    server = NatsServer(tmp_path / "nats", max_file_store=32 * 1024 * 1024)
    server.start()
    try:
        async with running_stack(server.url, tmp_path) as stack:
            kv = await stack.kv()
            before = [
                (await stack.http.post("/api/tasks/create", json=PROBE)).json()["taskId"]
                for _ in range(3)
            ]
            js = stack.nc.jetstream()
            await js.add_stream(StreamConfig(name="FILLER", subjects=["filler.>"]))
            with pytest.raises(ServiceUnavailableError):
                for _ in range(200):  # 32 MiB in 512 KiB messages, with room to spare
                    await js.publish("filler.x", b"x" * 512 * 1024)
            began = asyncio.get_running_loop().time()
            refused = await stack.http.post("/api/tasks/create", json=PROBE)
            assert asyncio.get_running_loop().time() - began < 5  # an answer, not a hang
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
            assert "full" in refused.json()["detail"]
            await js.delete_stream("FILLER")  # space returns
            after = await stack.http.post("/api/tasks/create", json=PROBE)
            assert after.status_code == 201, after.text
            for task_id in [*before, after.json()["taskId"]]:
                state = await wait_for_state(kv, task_id, lambda s: s.is_final, 30)
                assert state.status is TaskStatus.COMPLETED
    finally:
        server.stop()


@pytest.mark.parametrize("sync_interval", ["always", None], ids=["sync-always", "sync-default"])
async def test_nats_killed_twice_mid_load_loses_and_duplicates_nothing(
    tmp_path: Path, sync_interval: str | None
) -> None:
    """nats-server killed (-9) and restarted twice while clients create tasks, each with its
    own Idempotency-Key and retrying on 503 and connection errors: every key gets exactly
    one task, every task completes exactly once."""
    server = NatsServer(tmp_path / "nats", sync_interval=sync_interval)
    server.start()
    keys = [f"restart-{n}" for n in range(60)]
    created: dict[str, str] = {}
    milestones = {20: asyncio.Event(), 40: asyncio.Event()}
    try:
        async with running_stack(server.url, tmp_path) as stack:

            async def create(key: str) -> None:
                while True:
                    try:
                        answer = await stack.http.post(
                            "/api/tasks/create", json=PROBE, headers={"Idempotency-Key": key}
                        )
                    except httpx.TransportError:
                        answer = None
                    if answer is not None and answer.status_code in (200, 201):
                        created[key] = answer.json()["taskId"]
                        if len(created) in milestones:
                            milestones[len(created)].set()
                        return
                    assert answer is None or answer.status_code == 503, answer.text
                    await asyncio.sleep(0.2)  # the client's pause before its retry

            async def clients() -> None:
                for key in keys:
                    await create(key)

            load = asyncio.create_task(clients())
            for milestone in milestones.values():
                await asyncio.wait_for(milestone.wait(), 60)
                server.kill()
                server.start()
            await asyncio.wait_for(load, 120)
            kv = await stack.kv()
            for task_id in created.values():
                state = await wait_for_state(kv, task_id, lambda s: s.is_final, 60)
                assert state.status is TaskStatus.COMPLETED, state
            stored = await read_all_events(stack.nc)
    finally:
        server.stop()
    assert len(created) == len(keys) and len(set(created.values())) == len(keys)
    for task_id in created.values():
        assert len([e for e in stored[task_id] if isinstance(e, TaskCompleted)]) == 1
