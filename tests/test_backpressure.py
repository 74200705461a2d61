"""Back-pressure (issue 14): a client floods creates while the only worker is slow.

The admission arithmetic of ``pixelbus.gateway.backlog`` first (no bus: a server count
the test sets), then the flood. For the flood the gateway runs as its own process (its RSS is its own), with keys of two tenants: A has
a small active-task quota, B none of its own. Every answer must be 201, 429 (A's quota) or
503 (the pool's queue full, or the gateway busy), each refusal with ``Retry-After``; no
500, no hang. The pool's backlog (its consumer's ``num_pending``) never passes the limit,
the gateway's RSS stays bounded, and once the worker drains the queue every accepted task
has completed exactly once and no refused one was created.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import nats
import pytest
from fastapi import HTTPException
from nats.aio.client import Client

from pixelbus.contracts.events import TaskCompleted, TaskCreated
from pixelbus.contracts.subjects import QUOTAS_BUCKET, TASK_STREAM, Pool, pool_for_environment
from pixelbus.contracts.task import TaskState
from pixelbus.gateway.auth import Principal
from pixelbus.gateway.backlog import PoolBacklog
from pixelbus.gateway.quotas import ActiveTasks
from pixelbus.projector.rebuild import read_all_events
from pixelbus.runtime.keys import create_key
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.quotas import quota_key
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.waiting import eventually
from tests.bench_loadgen import percentile
from tests.bench_reads import proc
from tests.stack import Stack, running_stack, spawn_service
from tests.test_faults import SLOW, slow_workers

MAX_PENDING = 40  # tasks waiting in the face-swap pool
QUOTA_A = 15  # tenant A's active tasks
MAX_CONCURRENT = 48  # requests in the gateway at once
CLIENTS = 200  # concurrent clients, each sending its share one after the other
REQUESTS = 4000
TASK_S = 0.1  # the slow worker's time per task
ANSWER_BOUND_S = 10.0  # every request answered within this
RSS_GROWTH_BOUND_MIB = 64.0


class Server:
    """The pool's ``num_pending`` as the server counts it, and a clock to age samples."""

    def __init__(self, pending: int = 0) -> None:
        self.pending = pending
        self.now = 0.0
        self.samples = 0
        self.asked = asyncio.Event()  # set when a sample is asked for
        self.answer: asyncio.Event | None = None  # if set, a sample's answer waits for it

    async def sample(self, pool: Pool) -> int:
        self.samples += 1
        counted = self.pending  # the server counts as the request arrives
        self.asked.set()
        if self.answer is not None:
            await self.answer.wait()
        return counted


class Create:
    """One create through ``admit`` that publishes until ``release`` is set."""

    def __init__(self, backlog: PoolBacklog, release: asyncio.Event) -> None:
        self.decided = asyncio.Event()
        self.admitted = False
        self.task = asyncio.create_task(self._run(backlog, release))

    async def _run(self, backlog: PoolBacklog, release: asyncio.Event) -> None:
        try:
            async with backlog.admit("face_swap"):
                self.admitted = True
                self.decided.set()
                await release.wait()
        except HTTPException:
            self.decided.set()


async def _decided(creates: list[Create]) -> int:
    """How many of ``creates`` were admitted, once each has its answer."""
    await asyncio.wait_for(asyncio.gather(*(c.decided.wait() for c in creates)), 5)
    return sum(c.admitted for c in creates)


async def test_one_process_admits_exactly_up_to_the_limit_and_sees_room_return() -> None:
    server = Server(pending=30)
    backlog = PoolBacklog(server.sample, 40, clock=lambda: server.now)
    release = asyncio.Event()
    creates = [Create(backlog, release) for _ in range(25)]
    assert await _decided(creates) == 10 and server.samples == 1  # one sample for all
    release.set()
    await asyncio.gather(*(c.task for c in creates))
    server.pending += 10  # what the admitted creates stored
    with pytest.raises(HTTPException) as refused:
        await backlog.check("face_swap")
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "5"}
    assert "at most 40 tasks may wait" in refused.value.detail
    server.pending = 35  # a worker took five
    server.now += 0.05  # a full queue is looked at again this soon
    assert await _decided([Create(backlog, release) for _ in range(9)]) == 5


async def test_a_create_that_ends_while_a_sample_is_taken_stays_counted() -> None:
    """The sample may not hold it yet: the estimate errs upwards, never below the truth."""
    server = Server()
    backlog = PoolBacklog(server.sample, 40, clock=lambda: server.now)
    release = asyncio.Event()
    holding = Create(backlog, release)
    assert await _decided([holding]) == 1
    server.now += 1.0  # the sample is old: the next create asks for another
    server.asked.clear()
    server.answer = asyncio.Event()
    checking = asyncio.create_task(backlog.check("face_swap"))
    await asyncio.wait_for(server.asked.wait(), 5)  # counted 0: the publish is not stored
    release.set()
    await holding.task  # stored and settled while the sample's answer is on its way
    server.answer.set()
    await checking
    assert backlog.estimate(pool_for_environment("face_swap")) == 1


async def test_a_hundred_creates_of_one_tenant_at_once_take_their_slots_without_contention(
    nc: Client,
) -> None:
    """Concurrent creates of one tenant take turns on its quota counter in the process:
    racing each other's compare-and-swap, a quarter of them ran out of attempts (a 500)."""
    await ensure(nc.jetstream(), BusSettings())
    active = ActiveTasks(await nc.jetstream().key_value(QUOTAS_BUCKET), 1000)
    tenant = Principal(owner="tenant-a", scopes=frozenset({"tasks:write"}))
    taken = await asyncio.gather(*(active.reserve(tenant) for _ in range(100)))
    assert all(taken)
    entry = await (await nc.jetstream().key_value(QUOTAS_BUCKET)).get(quota_key("tenant-a"))
    assert entry.value == b"100"


@dataclass
class Answer:
    tenant: str
    status: int | None  # None: no answer in time (a hang) or a transport error
    seconds: float
    retry_after: str | None = None
    detail: str = ""
    task_id: str | None = None


@dataclass
class Samples:
    """The pool's backlog and the gateway's RSS, sampled every 10 ms while the flood runs."""

    backlog: list[int] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)


async def _tokens(url: str) -> dict[str, str]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure(js, BusSettings.from_env({"NATS_URL": url}))
        rw = ["tasks:write", "tasks:read"]
        _, a = await create_key(js, name="a", owner="tenant-a", scopes=rw, max_active=QUOTA_A)
        _, b = await create_key(js, name="b", owner="tenant-b", scopes=rw)
        return {"a": a, "b": b}
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def gateway_process(stack: Stack) -> AsyncIterator[tuple[str, int]]:
    """A gateway replica as its own process, once it answers; its URL and pid."""
    port = free_port()
    process = spawn_service(
        "pixelbus.gateway",
        {**stack.env, "PIXELBUS_PORT": str(port), "PIXELBUS_LOG_LEVEL": "ERROR"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def up() -> bool | None:
                assert process.poll() is None, "the gateway exited"
                with contextlib.suppress(httpx.TransportError):
                    return True if (await http.get(f"{base}/api/health")).is_success else None
                return None

            await eventually(up, timeout=30)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(10)


async def _create(http: aiohttp.ClientSession, tenant: str, token: str) -> Answer:
    began = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.post("/api/tasks/create", json=SLOW, headers=headers) as answer:
            body = await answer.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(tenant, None, time.monotonic() - began, detail=repr(exc))
    return Answer(
        tenant,
        answer.status,
        time.monotonic() - began,
        answer.headers.get("Retry-After"),
        str(body.get("detail", "")),
        body.get("taskId") if answer.status == 201 else None,
    )


async def flood(base: str, tokens: dict[str, str]) -> list[Answer]:
    """``REQUESTS`` creates by ``CLIENTS`` concurrent clients, alternating tenants (aiohttp:
    httpx's pool spends more CPU than the gateway at this concurrency)."""
    answers: list[Answer] = []
    timeout = aiohttp.ClientTimeout(total=ANSWER_BOUND_S)
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:

        async def client(n: int) -> None:
            for i in range(REQUESTS // CLIENTS):
                tenant = "ab"[(n + i) % 2]
                answers.append(await _create(http, tenant, tokens[tenant]))

        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return answers


async def sample(stack: Stack, pid: int, samples: Samples) -> None:
    js = stack.nc.jetstream()
    durable = pool_for_environment("face_swap").durable
    while True:
        info = await js.consumer_info(TASK_STREAM, durable)
        samples.backlog.append(info.num_pending or 0)
        samples.rss_mib.append(proc(pid)[1])
        await asyncio.sleep(0.01)  # the sampling period, not a synchronisation


async def all_final(stack: Stack, task_ids: list[str]) -> list[TaskState] | None:
    kv = await stack.kv()
    states = [(await read_state(kv, task_id))[0] for task_id in task_ids]
    if all(state is not None and state.is_final for state in states):
        return [state for state in states if state is not None]
    return None


@pytest.mark.e2e
@pytest.mark.fault
async def test_a_flood_of_creates_meets_back_pressure_not_unbounded_growth(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    tokens = await _tokens(nats_server.url)
    runs: list[str] = []
    async with running_stack(
        nats_server.url,
        tmp_path,
        worker=False,
        PIXELBUS_AUTH="required",
        PIXELBUS_RATE_LIMIT_RPS="100000",
        PIXELBUS_MAX_ACTIVE_TASKS="100000",
        PIXELBUS_MAX_PENDING_TASKS=str(MAX_PENDING),
        PIXELBUS_MAX_CONCURRENT_REQUESTS=str(MAX_CONCURRENT),
    ) as stack:
        async with gateway_process(stack) as (base, pid):
            rss_before = proc(pid)[1]
            [worker] = slow_workers(stack, runs, TASK_S, count=1, grace_s=2)
            working = asyncio.create_task(worker.run())
            samples = Samples()
            sampling = asyncio.create_task(sample(stack, pid, samples))
            try:
                began = time.monotonic()
                answers = await flood(base, tokens)
                flood_s = time.monotonic() - began
                rss_after = proc(pid)[1]
                accepted = [a.task_id for a in answers if a.task_id is not None]
                states = await eventually(lambda: all_final(stack, accepted), timeout=30)
            finally:
                sampling.cancel()
                worker.stop()
                await asyncio.wait_for(working, 15)
        stored = await read_all_events(stack.nc)

    by_status = Counter(a.status for a in answers)
    by_reason = Counter(a.detail.split(":")[0] for a in answers if a.status in (429, 503))
    p99 = percentile([a.seconds for a in answers], 0.99)
    print(
        f"\nfigure: {len(answers)} creates by {CLIENTS} clients in {flood_s:.1f} s: "
        f"{dict(sorted(by_status.items(), key=str))}; refusals {dict(by_reason)}; "
        f"backlog max {max(samples.backlog)} (limit {MAX_PENDING}); "
        f"p99 answer {p99 * 1000:.0f} ms, max {max(a.seconds for a in answers) * 1000:.0f} ms; "
        f"gateway RSS {rss_before:.0f} MiB before, {max(samples.rss_mib):.0f} peak, "
        f"{rss_after:.0f} after; {len(accepted)} accepted, drained and completed"
    )
    assert len(answers) == REQUESTS
    assert set(by_status) <= {201, 429, 503}, [
        a for a in answers if a.status not in (201, 429, 503)
    ]
    assert all(a.seconds < ANSWER_BOUND_S for a in answers)
    assert all(a.retry_after is not None for a in answers if a.status in (429, 503))
    # each kind of back-pressure met: A's quota, the queue's limit, the gateway's requests
    assert {a.tenant for a in answers if a.status == 429} == {"a"}
    assert any("queue is full" in a.detail for a in answers)
    assert any("gateway is busy" in a.detail for a in answers)
    assert max(samples.backlog) <= MAX_PENDING
    assert max(samples.rss_mib) - rss_before < RSS_GROWTH_BOUND_MIB
    # every accepted task completed once; nothing refused was created
    assert all(state.status.value == "COMPLETED" for state in states)
    assert sorted(runs) == sorted(accepted)
    assert {
        t for t, events in stored.items() if any(isinstance(e, TaskCreated) for e in events)
    } == set(accepted)
    for task_id in accepted:
        assert len([e for e in stored[task_id] if isinstance(e, TaskCompleted)]) == 1
