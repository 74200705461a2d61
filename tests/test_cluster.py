"""The stack on a 3-node JetStream cluster (replicas = 3): the stream leader dies mid-load.

N probe tasks are created over HTTP by a few concurrent clients (each create retried with
its ``Idempotency-Key`` on a 5xx or a connection error, as a real client would). When a
third of them were accepted, the node leading the task stream is SIGKILLed. Then: every
task completes, every task has exactly one ``TaskCreated`` and one ``TaskCompleted`` in
the stream (0 duplicates, none lost), and the KV projection says COMPLETED for each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from pixelbus.contracts.subjects import STATE_BUCKET, TASK_STREAM, event_filter
from pixelbus.contracts.task import TaskState
from pixelbus.runtime.state import read_state
from pixelbus.testkit.nats_cluster import NatsCluster
from pixelbus.testkit.waiting import eventually
from tests.stack import running_stack

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

TASKS = 240
CLIENTS = 8
KILL_AFTER = TASKS // 3


async def subject_counts(js: JetStreamContext, kind: str) -> Counter[str]:
    """Messages per task id of one event kind, counted by the stream itself."""
    info = await js.stream_info(TASK_STREAM, subjects_filter=event_filter(kind, "face_swap"))
    subjects = info.state.subjects or {}
    return Counter({subject.rsplit(".", 1)[1]: count for subject, count in subjects.items()})


async def stream_leader(js: JetStreamContext) -> str | None:
    info = await js.stream_info(TASK_STREAM)
    return info.cluster.leader if info.cluster else None


async def diagnose(js: JetStreamContext, accepted: list[str]) -> str:
    """What the stream, the consumers and the KV say about the tasks that did not complete."""
    completed = await subject_counts(js, "completed")
    missing = [task_id for task_id in accepted if task_id not in completed]
    kv = await js.key_value(STATE_BUCKET)
    lines = [f"{len(missing)} of {len(accepted)} tasks not completed"]
    for task_id in missing[:5]:
        state, _ = await read_state(kv, task_id)
        kinds = {
            kind: (await subject_counts(js, kind)).get(task_id, 0)
            for kind in ("created", "started", "outputs", "failed")
        }
        lines.append(f"{task_id}: events {kinds}, state {state and state.status.value}")
        if kinds["failed"]:
            failed = await js.get_last_msg(
                TASK_STREAM,
                f"{event_filter('failed', 'face_swap')[:-1]}{task_id}".replace(
                    ".*.failed", ".probe.failed"
                ),
            )
            lines.append(f"  failed: {failed.data!r}")
    for consumer in ("pool-faceswap", "storage-uploader", "projector"):
        info = await js.consumer_info(TASK_STREAM, consumer)
        lines.append(
            f"{consumer}: pending {info.num_pending}, ack pending {info.num_ack_pending}, "
            f"redelivered {info.num_redelivered}, leader {info.cluster and info.cluster.leader}"
        )
    return "\n".join(lines)


async def test_no_task_lost_or_duplicated_when_the_stream_leader_dies(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async with running_stack(
        nats_cluster.url,
        tmp_path,
        PIXELBUS_STREAM_REPLICAS="3",
        PIXELBUS_WORKER_CONCURRENCY="16",
        PIXELBUS_ACK_WAIT_S="5",
        # A leader election takes 5-10 s here, and while it lasts a publish to the stream
        # fails at once with "no responders" (the publisher retries timeouts only), so
        # each failed step burns a delivery. The retry budget must outlast an election:
        # 8 deliveries x 3 s. With 5 x 1 s, some tasks end FAILED (attempts_exhausted).
        PIXELBUS_MAX_DELIVER="8",
        PIXELBUS_RETRY_DELAY_S="3",
    ) as stack:
        js = stack.nc.jetstream()
        info = await js.stream_info(TASK_STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        old_leader = info.cluster.leader
        assert old_leader in {node.name for node in nats_cluster.nodes}

        accepted: list[str] = []
        retries = Counter[str]()
        kill_now = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(TASKS):
            queue.put_nowait(index)

        async def create_one(http: httpx.AsyncClient, index: int) -> str:
            key = f"cluster-{index}-{uuid.uuid4().hex[:8]}"
            body = {"workflow": "probe", "environment": "face_swap"}
            for attempt in range(60):
                try:
                    answer = await http.post(
                        "/api/tasks/create", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError as exc:
                    retries[type(exc).__name__] += 1
                else:
                    if answer.status_code in (200, 201):
                        return str(answer.json()["taskId"])
                    assert answer.status_code >= 500 or answer.status_code == 429, answer.text
                    retries[str(answer.status_code)] += 1
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))  # client back-off
            raise AssertionError(f"task {index} never accepted")

        async def client() -> None:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
                while not queue.empty():
                    accepted.append(await create_one(http, queue.get_nowait()))
                    if len(accepted) >= KILL_AFTER:
                        kill_now.set()

        started = time.monotonic()
        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await asyncio.wait_for(kill_now.wait(), 30)
        in_flight_at_kill = len(accepted) - sum((await subject_counts(js, "completed")).values())
        nats_cluster.kill(old_leader)
        killed_at = time.monotonic()

        quick = stack.nc.jetstream(timeout=0.5)  # poll the election, not request timeouts

        async def new_leader() -> str | None:
            try:
                leader = await stream_leader(quick)
            except Exception:
                return None  # the client is still reconnecting, or no leader yet
            return leader if leader and leader != old_leader else None

        leader = await eventually(new_leader, timeout=30)
        failover_s = time.monotonic() - killed_at
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        assert len(accepted) == TASKS and len(set(accepted)) == TASKS

        async def all_completed() -> Counter[str] | None:
            try:
                counts = await subject_counts(js, "completed")
            except Exception:
                return None
            return counts if set(accepted) <= set(counts) else None

        try:
            completed = await eventually(all_completed, timeout=60)
        except TimeoutError:
            raise AssertionError(await diagnose(js, accepted)) from None
        elapsed = time.monotonic() - started
        created = await subject_counts(js, "created")
        outputs = await subject_counts(js, "outputs")
        kv = await js.key_value(STATE_BUCKET)

        async def all_projected() -> list[TaskState] | None:
            # The projection follows the stream; after an election it may lag a moment.
            try:
                found = [(await read_state(kv, task_id))[0] for task_id in accepted]
            except Exception:
                return None
            final = [s for s in found if s is not None and s.is_final]
            return final if len(final) == len(accepted) else None

        states = await eventually(all_projected, timeout=30)

        duplicate_completed = sum(count - 1 for count in completed.values())
        duplicate_created = sum(count - 1 for count in created.values())
        print(
            f"\ncluster test: {TASKS} probe tasks, {CLIENTS} clients, replicas=3; "
            f"killed stream leader {old_leader} after {KILL_AFTER} accepted "
            f"({in_flight_at_kill} accepted and not yet completed); new leader {leader} "
            f"after {failover_s:.2f}s; create retries {dict(retries)}; "
            f"completed {len(completed)}/{TASKS} in {elapsed:.1f}s; "
            f"TaskCreated duplicates {duplicate_created}, TaskCompleted duplicates "
            f"{duplicate_completed}; OutputsReady messages {sum(outputs.values())}"
        )
        assert set(completed) == set(accepted)
        assert duplicate_completed == 0
        assert duplicate_created == 0
        assert all(state is not None and state.status.value == "COMPLETED" for state in states)
