"""Fault tests: processes die, the system does not lose or duplicate work."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from pixelbus.contracts.events import TaskCompleted, TaskStarted
from pixelbus.contracts.subjects import pool_for_environment
from pixelbus.contracts.task import TaskStatus
from pixelbus.projector.rebuild import read_all_events
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.worker import OutputFile, TaskContext, TaskResult, WorkerRuntime
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import EventLog, wait_for_state
from tests.conftest import data_uri
from tests.stack import running_stack, spawn_worker

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


async def test_a_task_five_times_longer_than_its_ack_wait_runs_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Long work keeps its lease by heartbeating: with a 0.5 s ack wait, a 2.5 s task on one
    of two workers is never handed to the other."""
    runs: list[str] = []

    async def slow(ctx: TaskContext) -> TaskResult:
        runs.append(ctx.task_id)
        await asyncio.sleep(2.5)  # the work itself: five ack waits long
        return TaskResult(outputs=[OutputFile("slow.txt", b"done", "text/plain")])

    async with running_stack(
        nats_server.url, tmp_path, worker=False, PIXELBUS_ACK_WAIT_S="0.5"
    ) as stack:
        settings = BusSettings.from_env(stack.env)
        workers = [
            WorkerRuntime(
                nc=stack.nc,
                js=stack.nc.jetstream(),
                pool=pool_for_environment("face_swap"),
                handlers={"slow": slow},
                settings=settings,
                concurrency=1,
                grace_s=5,
            )
            for _ in range(2)
        ]
        running = [asyncio.create_task(w.run()) for w in workers]
        try:
            body = {"workflow": "slow", "environment": "face_swap"}
            task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
            final = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*running), 15)
        assert final.status is TaskStatus.COMPLETED and final.attempts == 1
        assert runs == [task_id]
        stored = (await read_all_events(stack.nc))[task_id]
        assert [type(e).__name__ for e in stored if isinstance(e, TaskStarted)] == ["TaskStarted"]
        assert len([e for e in stored if isinstance(e, TaskCompleted)]) == 1
