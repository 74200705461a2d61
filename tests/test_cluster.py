"""The stack on a 3-node JetStream cluster (replicas = 3) under faults of the cluster.

In each test a few clients create probe tasks over HTTP, each create retried with its
``Idempotency-Key`` on a 5xx or a connection error (as a real client would), while:

- the node leading the task stream is SIGKILLed;
- a follower is cut off from the other two nodes (each of its route links black-holed by a
  proxy that keeps the sockets open) until it is well behind, then healed: it catches up;
- the leader is cut off the same way: the other two elect a new one, clients meanwhile get
  503s and retry, and the old leader catches up once healed.

Then every accepted task completes, with exactly one ``TaskCreated`` and one
``TaskCompleted`` in the stream (none lost, none duplicated, one task per key), and the KV
projection says COMPLETED for each. Each test prints its figures.

The clients and the services talk to one node; the node that is cut off is another, as
a node whose clients were cut off with it would be a different fault. Two shorter tests
check the test kit's partition on a bare stream, and the publisher's retry of a message
whose first copy waits for a quorum (which the leader's cut-off test runs into).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from pixelbus.contracts.events import TaskCreated, encode_event, event_id
from pixelbus.contracts.subjects import (
    STATE_BUCKET,
    SUBJECT_ROOT,
    TASK_STREAM,
    event_filter,
    task_subject,
)
from pixelbus.contracts.task import TaskState
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.state import read_state
from pixelbus.testkit.nats_cluster import NatsCluster
from pixelbus.testkit.waiting import eventually
from tests.stack import running_stack
from tests.test_faults import PROBE

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

T = TypeVar("T")

TASKS = 240
CLIENTS = 8
KILL_AFTER = TASKS // 3
#: how far (in stream messages) a cut-off follower must fall behind before it is healed
PARTITION_LAG = 300
#: The longest a client may wait for its create to be accepted, retries included: an
#: election takes 4-9 s of raft timeouts (drawn per group: the task stream, the
#: idempotency bucket... each that the node cut off led), a request caught in it times out
#: after 5 s (NATS's request timeout), and the client's retry then goes through.
LONGEST_WAIT_S = 15
#: the steady load of the partition tests: clients, each pausing between two tasks
STEADY_CLIENTS = 4
STEADY_PACE_S = 0.05

CLUSTER_ENV: dict[str, Any] = {  # the stack's settings (str values)
    "PIXELBUS_STREAM_REPLICAS": "3",
    "PIXELBUS_WORKER_CONCURRENCY": "16",
    "PIXELBUS_ACK_WAIT_S": "5",
    # A leader election takes 5-10 s here, and while it lasts a publish to the stream
    # fails at once with "no responders" (the publisher retries timeouts only), so each
    # failed step burns a delivery. The retry budget must outlast an election: 8
    # deliveries x 3 s. With 5 x 1 s, some tasks end FAILED (attempts_exhausted).
    "PIXELBUS_MAX_DELIVER": "8",
    "PIXELBUS_RETRY_DELAY_S": "3",
}


async def subject_counts(js: JetStreamContext, kind: str) -> Counter[str]:
    """Messages per task id of one event kind, counted by the stream itself."""
    info = await js.stream_info(TASK_STREAM, subjects_filter=event_filter(kind, "face_swap"))
    subjects = info.state.subjects or {}
    return Counter({subject.rsplit(".", 1)[1]: count for subject, count in subjects.items()})


async def stream_leader(js: JetStreamContext) -> str | None:
    info = await js.stream_info(TASK_STREAM)
    return (info.cluster.leader or None) if info.cluster else None


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


@dataclass
class ProbeLoad:
    """Clients creating probe tasks one after another, each create retried with its
    ``Idempotency-Key`` until accepted; ``total`` tasks, or until ``stop``."""

    clients: int = CLIENTS
    total: int | None = None
    pace_s: float = 0.0  # each client's pause between two tasks: a steady rate
    accepted: dict[str, str] = field(default_factory=dict)  # key -> task id
    first_try: dict[str, float] = field(default_factory=dict)  # task id -> its key's 1st try
    refusals: Counter[str] = field(default_factory=Counter)  # status code or error name
    longest_wait_s: float = 0.0  # a create's first try to its acceptance, retries included
    _keys: int = field(default=0, init=False)
    _stopping: bool = field(default=False, init=False)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition, init=False)

    @property
    def task_ids(self) -> list[str]:
        return list(self.accepted.values())

    @property
    def server_errors(self) -> int:
        return sum(n for what, n in self.refusals.items() if what.startswith("5"))

    @property
    def connection_errors(self) -> int:
        return sum(n for what, n in self.refusals.items() if not what.isdigit())

    def stop(self) -> None:
        """No new keys; a key already tried is still retried until accepted."""
        self._stopping = True

    async def until(self, count: int, timeout: float = 30) -> None:
        """Until ``count`` tasks in all were accepted."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.accepted) >= count), timeout
            )

    async def client(self, http: httpx.AsyncClient) -> None:
        while not self._stopping and (self.total is None or self._keys < self.total):
            self._keys += 1
            await self._create(http, f"cluster-{self._keys}-{uuid.uuid4().hex[:8]}")
            if self.pace_s:
                await asyncio.sleep(self.pace_s)  # the load's pace, not a wait on the system

    async def _create(self, http: httpx.AsyncClient, key: str) -> None:
        first_try, started = time.time(), time.monotonic()
        attempt = 0
        while time.monotonic() - started < 60:
            try:
                answer = await http.post(
                    "/api/tasks/create", json=PROBE, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError as exc:
                self.refusals[type(exc).__name__] += 1
            else:
                if answer.status_code in (200, 201):
                    task_id = str(answer.json()["taskId"])
                    self.first_try[task_id] = first_try
                    self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - started)
                    async with self._changed:
                        self.accepted[key] = task_id
                        self._changed.notify_all()
                    return
                assert answer.status_code in (429, 503), answer.text  # never a 500
                self.refusals[str(answer.status_code)] += 1
            attempt += 1
            await asyncio.sleep(min(0.05 * attempt, 0.5))  # the client's back-off
        raise AssertionError(f"key {key} not accepted in 60 s: {dict(self.refusals)}")


@contextlib.asynccontextmanager
async def probe_load(base_url: str, load: ProbeLoad) -> AsyncIterator[asyncio.Future[list[None]]]:
    """``load``'s clients running until the block ends; await what it yields to see them
    finish (after ``total`` tasks or a ``stop``), with any client's failure."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        clients = [asyncio.create_task(load.client(http)) for _ in range(load.clients)]
        try:
            yield asyncio.gather(*clients)
        finally:
            for client in clients:
                client.cancel()
            await asyncio.wait(clients)


@dataclass(frozen=True)
class Outcome:
    """What the stream and the projection hold once every accepted task completed."""

    completed: Counter[str]  # TaskCompleted messages per task
    created: Counter[str]  # TaskCreated messages per task
    outputs: Counter[str]
    states: list[TaskState]
    longest_final_s: float  # a key's first try to its TaskCompleted stored in the stream

    def duplicated(self) -> int:
        return sum(n - 1 for n in self.completed.values()) + sum(
            n - 1 for n in self.created.values()
        )

    def lost(self, accepted: list[str]) -> int:
        return len(set(accepted) - set(self.completed))


async def settle(js: JetStreamContext, load: ProbeLoad, timeout: float = 60) -> Outcome:
    """Waits until every accepted task has its ``TaskCompleted`` in the stream and a final
    state in the KV (or fails with what ``diagnose`` finds); what they hold. Each read is
    retried: a heal may set off elections, and a request meanwhile goes unanswered."""
    accepted = load.task_ids

    async def all_completed() -> Counter[str] | None:
        counts = await answered(subject_counts(js, "completed"))
        return counts if counts is not None and set(accepted) <= set(counts) else None

    try:
        completed = await eventually(all_completed, timeout=timeout)
    except TimeoutError:
        raise AssertionError(await diagnose(js, accepted)) from None

    async def all_projected() -> list[TaskState] | None:
        # The projection follows the stream; after an election it may lag a moment.
        found = await answered(read_states(js, accepted))
        final = [s for s in found or [] if s is not None and s.is_final]
        return final if len(final) == len(accepted) else None

    states = await eventually(all_projected, timeout=30)
    count = sum(completed.values())
    stored = await eventually(lambda: answered(completion_times(js, count)), timeout=30)
    created = await eventually(lambda: answered(subject_counts(js, "created")), timeout=30)
    outputs = await eventually(lambda: answered(subject_counts(js, "outputs")), timeout=30)
    return Outcome(
        completed=completed,
        created=created,
        outputs=outputs,
        states=states,
        longest_final_s=max((stored[t] - load.first_try[t] for t in accepted), default=0.0),
    )


async def answered(request: Awaitable[T]) -> T | None:
    """The request's answer, or None if the bus did not answer (an election, a timeout)."""
    try:
        return await request
    except (nats.errors.Error, TimeoutError):
        return None


async def completion_times(js: JetStreamContext, count: int) -> dict[str, float]:
    """When each task's first ``TaskCompleted`` was stored (the stream's own timestamp)."""
    subscription = await js.subscribe(event_filter("completed", "face_swap"), ordered_consumer=True)
    stored: dict[str, float] = {}
    try:
        for _ in range(count):
            msg = await subscription.next_msg(timeout=10)
            stored.setdefault(msg.subject.rsplit(".", 1)[1], msg.metadata.timestamp.timestamp())
    finally:
        await subscription.unsubscribe()
    return stored


async def read_states(js: JetStreamContext, task_ids: list[str]) -> list[TaskState | None]:
    kv = await js.key_value(STATE_BUCKET)
    return [(await read_state(kv, task_id))[0] for task_id in task_ids]


def check(load: ProbeLoad, outcome: Outcome) -> None:
    """Nothing accepted lost, nothing duplicated, one task per key, every one COMPLETED."""
    accepted = load.task_ids
    assert len(set(accepted)) == len(accepted), "two keys answered with one task"
    assert set(outcome.completed) == set(accepted), outcome.lost(accepted)
    assert set(outcome.created) == set(accepted), "a task that no client was answered with"
    assert outcome.duplicated() == 0, (outcome.created, outcome.completed)
    assert all(state.status.value == "COMPLETED" for state in outcome.states)


def figures(scenario: str, load: ProbeLoad, outcome: Outcome, *more: str) -> None:
    accepted = load.task_ids
    print(
        f"\nfigure: cluster, {scenario}: tasks accepted {len(accepted)}, "
        f"lost {outcome.lost(accepted)}, duplicated {outcome.duplicated()}, "
        f"5xx seen by clients {load.server_errors} "
        f"(+{load.connection_errors} connection errors, {dict(load.refusals)}), "
        f"longest create wait {load.longest_wait_s:.2f}s, "
        f"longest create->final {outcome.longest_final_s:.2f}s, " + ", ".join(more)
    )


def client_node(cluster: NatsCluster, nc: Client) -> str:
    """The node a client is connected to (the stack's services, and its gateway by the same
    URL)."""
    url = nc.connected_url
    assert url is not None
    return next(node.name for node in cluster.nodes if node.port == url.port)


async def node_view(cluster: NatsCluster, node: str) -> dict[str, Any] | None:
    """One node's own view of the task stream (its monitoring port), None if unreachable."""
    try:
        return await asyncio.to_thread(cluster.stream_detail, node, TASK_STREAM)
    except OSError:
        return None


async def last_seq(cluster: NatsCluster, node: str) -> int | None:
    """The task stream's last sequence in one node's own copy."""
    view = await node_view(cluster, node)
    return int(view["state"]["last_seq"]) if view else None


async def caught_up(cluster: NatsCluster, node: str, target: int, timeout: float = 30) -> float:
    """Seconds until ``node``'s copy of the task stream reaches sequence ``target``."""
    started = time.monotonic()

    async def reached() -> bool | None:
        seq = await last_seq(cluster, node)
        return True if seq is not None and seq >= target else None

    await eventually(reached, timeout=timeout)
    return time.monotonic() - started


async def copies_agree(cluster: NatsCluster, timeout: float = 30) -> int:
    """Until the three copies of the task stream end at one sequence; that sequence."""

    async def agree() -> int | None:
        seqs = {await last_seq(cluster, node.name) for node in cluster.nodes}
        return seqs.pop() if len(seqs) == 1 and None not in seqs else None

    return await eventually(agree, timeout=timeout)


async def new_leader(nc: Client, old: str, timeout: float = 30) -> str:
    """Until the task stream has a leader other than ``old``; its name."""
    quick = nc.jetstream(timeout=0.5)  # poll the election, not request timeouts

    async def elected() -> str | None:
        try:
            leader = await stream_leader(quick)
        except nats.errors.Error:  # timeouts and JetStream API errors among them
            return None  # the client is still reconnecting, or no leader yet
        return leader if leader and leader != old else None

    return await eventually(elected, timeout=timeout)


async def leader_away_from(nc: Client, node: str) -> str:
    """The task stream's leader, asked to step down first if it is ``node``."""
    leader = await stream_leader(nc.jetstream())
    assert leader is not None
    if leader != node:
        return leader
    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{TASK_STREAM}", b"", timeout=5)
    return await new_leader(nc, node)


async def behind(cluster: NatsCluster, node: str, others: str, by: int, timeout: float = 20) -> int:
    """Until ``node``'s copy of the task stream is ``by`` messages behind ``others``'s; by
    how many it then is (a cut that leaks would never get there)."""

    async def far_enough() -> int | None:
        mine, theirs = await last_seq(cluster, node), await last_seq(cluster, others)
        if mine is None or theirs is None or theirs - mine < by:
            return None
        return theirs - mine

    return await eventually(far_enough, timeout=timeout)


async def gave_up_on_the_leader(cluster: NatsCluster, node: str, timeout: float = 20) -> None:
    """Until ``node`` follows no leader of the task stream any more: its election timer ran
    out without a heartbeat, and it campaigns (in vain, alone)."""

    async def leaderless() -> bool | None:
        view = await node_view(cluster, node)
        return True if view and not (view.get("cluster") or {}).get("leader") else None

    await eventually(leaderless, timeout=timeout)


async def replicated_stream(js: JetStreamContext, subjects: str) -> None:
    """The task stream with three replicas, on a cluster that has just started: a create's
    answer was seen lost while the routes were still settling (the stream was made), so
    the create is repeated until answered (the same config again is no error)."""
    await eventually(
        lambda: answered(js.add_stream(name=TASK_STREAM, subjects=[subjects], num_replicas=3)),
        timeout=20,
    )


async def test_a_cut_off_node_falls_behind_and_catches_up_once_healed(
    partitionable_cluster: NatsCluster,
) -> None:
    """The test kit's partition, on a bare R3 stream: every route runs through a proxy, a
    follower cut off takes no message while the other two go on acknowledging, then heals."""
    cluster = partitionable_cluster
    assert cluster.routes_around_proxies() == []
    assert all(proxy.connections for proxy in cluster.links.values())
    nc = await nats.connect(cluster.url)
    try:
        js = nc.jetstream()
        await replicated_stream(js, "bare.>")
        # the stream's interest may reach this node a moment after the create's answer
        first = {"Nats-Msg-Id": "first"}
        await eventually(lambda: answered(js.publish("bare.first", b"0", headers=first)))
        leader = await stream_leader(js)
        assert leader is not None
        follower = next(
            n.name for n in cluster.nodes if n.name not in (leader, client_node(cluster, nc))
        )
        await copies_agree(cluster)
        cluster.partition(follower)
        for n in range(50):
            await js.publish("bare.cut", str(n).encode())  # two of three: acknowledged
        assert await behind(cluster, follower, leader, 50) == 50
        cluster.heal(follower)
        assert await copies_agree(cluster) == 51
    finally:
        await nc.close()


async def test_no_task_lost_or_duplicated_when_the_stream_leader_dies(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """The leader is SIGKILLed once a third of the tasks are accepted."""
    async with running_stack(nats_cluster.url, tmp_path, **CLUSTER_ENV) as stack:
        js = stack.nc.jetstream()
        info = await js.stream_info(TASK_STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        old_leader = info.cluster.leader
        assert old_leader in {node.name for node in nats_cluster.nodes}

        load = ProbeLoad(total=TASKS)
        started = time.monotonic()
        async with probe_load(stack.base_url, load) as finished:
            await load.until(KILL_AFTER)
            in_flight = len(load.accepted) - sum((await subject_counts(js, "completed")).values())
            nats_cluster.kill(old_leader)
            killed_at = time.monotonic()
            leader = await new_leader(stack.nc, old_leader)
            failover_s = time.monotonic() - killed_at
            await asyncio.wait_for(finished, 60)
        assert len(load.accepted) == TASKS
        outcome = await settle(js, load)
        elapsed = time.monotonic() - started

    figures(
        f"stream leader {old_leader} killed after {KILL_AFTER} of {TASKS} accepted "
        f"({in_flight} accepted and not yet completed)",
        load,
        outcome,
        f"new leader {leader} after {failover_s:.2f}s",
        f"all completed in {elapsed:.1f}s",
        f"OutputsReady messages {sum(outcome.outputs.values())}",
    )
    check(load, outcome)


async def test_a_follower_cut_off_under_load_catches_up_and_nothing_is_lost(
    partitionable_cluster: NatsCluster, tmp_path: Path
) -> None:
    """A follower of the task stream is cut off until it has given up on the leader (its
    election timer ran out) and is PARTITION_LAG messages behind, then healed while the load
    goes on."""
    cluster = partitionable_cluster
    async with running_stack(cluster.url, tmp_path, **CLUSTER_ENV) as stack:
        js = stack.nc.jetstream()
        assert cluster.routes_around_proxies() == []
        leader = await stream_leader(js)
        assert leader is not None
        follower = next(
            n.name for n in cluster.nodes if n.name not in (leader, client_node(cluster, stack.nc))
        )
        load = ProbeLoad(clients=STEADY_CLIENTS, pace_s=STEADY_PACE_S)
        async with probe_load(stack.base_url, load) as finished:
            await load.until(40)
            led = await asyncio.to_thread(cluster.led_by, follower)
            cluster.partition(follower)
            cut_at, before = time.monotonic(), len(load.accepted)
            await gave_up_on_the_leader(cluster, follower)
            lag = await behind(cluster, follower, leader, PARTITION_LAG)
            during = len(load.accepted) - before
            cluster.heal(follower)
            cut_s = time.monotonic() - cut_at
            target = await last_seq(cluster, leader)
            assert target is not None
            catch_up_s = await caught_up(cluster, follower, target)
            await load.until(len(load.accepted) + 40)  # and the load goes on
            load.stop()
            await asyncio.wait_for(finished, 60)
        outcome = await settle(js, load)
        end = await copies_agree(cluster)
        leader_after = await eventually(lambda: answered(stream_leader(js)), timeout=30)

    figures(
        f"follower {follower} cut off {cut_s:.1f}s (leader {leader})",
        load,
        outcome,
        f"{follower} led {', '.join(led) or 'nothing'}",
        f"{lag} messages behind when healed",
        f"caught up {catch_up_s:.2f}s after the heal",
        f"copies agree at sequence {end}",
        f"leader afterwards {leader_after}",
        f"accepted during the cut {during}",
    )
    check(load, outcome)
    assert load.longest_wait_s < LONGEST_WAIT_S  # an election and a timed-out request


async def test_the_leader_cut_off_under_load_is_replaced_and_nothing_is_lost(
    partitionable_cluster: NatsCluster, tmp_path: Path
) -> None:
    """The task stream's leader is cut off: the other two elect a new one, creates resume
    through it; then the old leader is healed and catches up."""
    cluster = partitionable_cluster
    async with running_stack(cluster.url, tmp_path, **CLUSTER_ENV) as stack:
        js = stack.nc.jetstream()
        assert cluster.routes_around_proxies() == []
        old_leader = await leader_away_from(stack.nc, client_node(cluster, stack.nc))
        load = ProbeLoad(clients=STEADY_CLIENTS, pace_s=STEADY_PACE_S)
        async with probe_load(stack.base_url, load) as finished:
            await load.until(40)
            led = await asyncio.to_thread(cluster.led_by, old_leader)
            cluster.partition(old_leader)
            cut_at = time.monotonic()
            leader = await new_leader(stack.nc, old_leader)
            failover_s = time.monotonic() - cut_at
            await load.until(len(load.accepted) + 40)  # creates go through the new leader
            cluster.heal(old_leader)
            cut_s = time.monotonic() - cut_at
            target = await last_seq(cluster, leader)
            assert target is not None
            catch_up_s = await caught_up(cluster, old_leader, target)
            await load.until(len(load.accepted) + 20)
            load.stop()
            await asyncio.wait_for(finished, 60)
        outcome = await settle(js, load)
        end = await copies_agree(cluster)

    figures(
        f"stream leader {old_leader} cut off {cut_s:.1f}s",
        load,
        outcome,
        f"{old_leader} led {', '.join(led)}",
        f"new leader {leader} after {failover_s:.2f}s",
        f"old leader caught up {catch_up_s:.2f}s after the heal",
        f"copies agree at sequence {end}",
    )
    check(load, outcome)
    assert load.longest_wait_s < LONGEST_WAIT_S  # an election and a timed-out request


class RecordingStream:
    """A real JetStream context that also keeps what each publish raised."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.raised: list[BaseException] = []

    async def publish(self, *args: Any, **kwargs: Any) -> PubAck:
        try:
            return await self.js.publish(*args, **kwargs)
        except Exception as exc:
            self.raised.append(exc)
            raise


async def refused_then_stored(
    js: JetStreamContext,
    cluster: NatsCluster,
    leader: str,
    followers: list[str],
    event: TaskCreated,
) -> None:
    at_leader = await nats.connect(cluster.node(leader).url)  # it reaches the leader alone
    try:
        with pytest.raises(TimeoutError):  # proposed, not committed: no ack
            await at_leader.jetstream().publish(
                task_subject("face_swap", "probe", event.kind, event.task_id),
                encode_event(event),
                timeout=0.5,
                headers={"Nats-Msg-Id": event.event_id},
            )
        stream = RecordingStream(at_leader.jetstream())
        publisher = EventPublisher(cast(JetStreamContext, stream), timeout_s=0.5)
        publishing = asyncio.create_task(
            publisher.publish(event, environment="face_swap", workflow="probe")
        )

        async def refused_in_process() -> bool | None:
            if publishing.done():
                publishing.result()  # raised: the failure this test is about
                raise AssertionError("stored while the quorum was away")
            codes = {getattr(exc, "err_code", None) for exc in stream.raised}
            return True if 10158 in codes else None

        await eventually(refused_in_process, timeout=10)
        for follower in followers:
            cluster.heal(follower)
        ack = await asyncio.wait_for(publishing, 20)
        assert ack.duplicate and ack.seq == 1  # the first copy, committed once healed
        assert (await js.stream_info(TASK_STREAM)).state.messages == 1
    finally:
        await at_leader.close()


async def test_a_publish_retried_while_its_first_copy_awaits_its_quorum_is_stored_once(
    partitionable_cluster: NatsCluster,
) -> None:
    """The stream's leader cut off from both followers: a publish is proposed but cannot be
    committed, its ack never comes. Its retry (same message id) is refused with "duplicate
    message id is in process" (10158); the publisher retries that as it retries an election,
    and once the quorum is back the message is stored once. It used to raise at once: the
    step failed and its message was redelivered seconds later, a delivery burnt."""
    cluster = partitionable_cluster
    nc = await nats.connect(cluster.url)
    try:
        js = nc.jetstream()
        await replicated_stream(js, f"{SUBJECT_ROOT}.>")
        leader = await stream_leader(js)
        assert leader is not None
        followers = [node.name for node in cluster.nodes if node.name != leader]
        event = TaskCreated(
            event_id=event_id("task_quorum", "created"),
            task_id="task_quorum",
            occurred_at=datetime.now(UTC),
            workflow="probe",
            environment="face_swap",
            input_data={},
        )
        for follower in followers:
            cluster.partition(follower)
        await refused_then_stored(js, cluster, leader, followers, event)
    finally:
        await nc.close()
