"""Fault tests: a storage provider that hangs, and one that is slow.

The R2 provider writes to the test kit's S3 server through a ``FaultyProxy``, which can
stop answering (``fail_next`` with ``hang``) and start again (``heal``) while the stack
runs, or hold every request (``delay_s``). The uploader runs as its own process, as in
production, with ``PIXELBUS_UPLOAD_CONCURRENCY`` slots: its RSS is read from ``/proc``
and its in-flight gauge from its ``/metrics`` while the load runs; the proxy counts the
requests open at once (in all, and on one key). What must hold: the uploader never has
more uploads in flight than its slots, its memory does not grow with the work waiting,
the gateway keeps answering, a hung upload times out and is retried (never lost), an
upload is never handed to a second delivery while the first still runs (in-progress acks
hold the lease), and every task completes exactly once, under a key of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pixelbus.contracts.events import AnyEvent, OutputsReady, TaskCompleted, TaskFailed
from pixelbus.contracts.subjects import TASK_STREAM, UPLOADER_CONSUMER
from pixelbus.contracts.task import TaskStatus
from pixelbus.projector.rebuild import read_all_events
from pixelbus.storage_uploader.providers import output_key
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.s3_server import FaultyProxy, S3Server
from pixelbus.testkit.waiting import EventLog, eventually, wait_for_state
from tests.bench_loadgen import percentile
from tests.bench_reads import proc
from tests.stack import Stack, running_stack, spawn_service
from tests.test_faults import PROBE
from tests.test_metrics import sample
from tests.test_storage_providers_e2e import r2_env, run_probe

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


@dataclass
class UploaderProcess:
    """The uploader as a process, and what was sampled of it every 0.1 s while it ran."""

    pid: int
    metrics_url: str
    rss_mib: list[float] = field(default_factory=list)
    in_flight: list[float] = field(default_factory=list)

    def rss_now(self) -> float:
        return proc(self.pid)[1]

    async def sample(self, http: httpx.AsyncClient) -> None:
        while True:
            self.rss_mib.append(self.rss_now())
            with contextlib.suppress(httpx.TransportError):
                text = (await http.get(self.metrics_url)).text
                self.in_flight.append(
                    sample(text, "pixelbus_tasks_in_flight", pool=UPLOADER_CONSUMER)
                )
            await asyncio.sleep(0.1)  # the sampling period, not a synchronisation


@contextlib.asynccontextmanager
async def uploader_process(
    stack: Stack, proxy: FaultyProxy, concurrency: int
) -> AsyncIterator[UploaderProcess]:
    """The storage uploader as its own process with ``concurrency`` slots, once it has
    checked its bucket (its S3 client made: RSS from then on is the baseline)."""
    port = free_port()
    process = spawn_service(
        "pixelbus.storage_uploader",
        {
            **stack.env,
            "PIXELBUS_UPLOAD_CONCURRENCY": str(concurrency),
            "PIXELBUS_PROBE_PORT": str(port),
            "PIXELBUS_STORAGE_HEALTH_INTERVAL_S": "3600",  # no bucket checks amid the load
            "PIXELBUS_LOG_LEVEL": "ERROR",
        },
    )
    uploader = UploaderProcess(process.pid, f"http://127.0.0.1:{port}/metrics")
    sampling: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> bool | None:
                with contextlib.suppress(httpx.TransportError):
                    answer = await http.get(f"http://127.0.0.1:{port}/readyz")
                    checked = any(k.startswith("HEAD ") for k in proxy.forwarded)
                    return True if answer.status_code == 200 and checked else None
                return None

            await eventually(ready, timeout=30)
            sampling = asyncio.create_task(uploader.sample(http))
            yield uploader
    finally:
        if sampling is not None:
            sampling.cancel()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)


async def create_probes(stack: Stack, count: int) -> tuple[list[str], list[float]]:
    """``count`` probe tasks created through the gateway; their ids and each POST's time."""
    ids: list[str] = []
    seconds: list[float] = []
    for _ in range(count):
        began = time.perf_counter()
        answer = await stack.http.post("/api/tasks/create", json=PROBE)
        seconds.append(time.perf_counter() - began)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["taskId"])
    return ids, seconds


async def read_tasks(stack: Stack, ids: list[str], seconds: list[float]) -> None:
    """GET the tasks one after another, round and round, timing each, until cancelled."""
    while True:
        for task_id in ids:
            began = time.perf_counter()
            answer = await stack.http.get(f"/api/tasks/{task_id}")
            seconds.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text


async def uploader_deliveries(stack: Stack) -> int:
    """How many times the uploaders' consumer has delivered a message (redeliveries too)."""
    info = await stack.nc.jetstream().consumer_info(TASK_STREAM, UPLOADER_CONSUMER)
    assert info.delivered is not None and info.delivered.consumer_seq is not None
    return int(info.delivered.consumer_seq)


def check_each_stored_once(
    stored: dict[str, list[AnyEvent]], ids: list[str], proxy: FaultyProxy, s3: S3Server, bucket: str
) -> None:
    """One TaskCompleted per task; its object under the key the OutputsReady fixes (so a
    redelivery overwrites), written once, and nothing else in the bucket."""
    keys = []
    for task_id in ids:
        [completed] = [e for e in stored[task_id] if isinstance(e, TaskCompleted)]
        [ready] = [e for e in stored[task_id] if isinstance(e, OutputsReady)]
        [output] = completed.outputs
        assert output.key == output_key(task_id, "probe.json", ready.occurred_at.date())
        assert proxy.forwarded[f"PUT /{bucket}/{output.key}"] == 1, output.key
        keys.append(output.key)
    listed = s3.client().list_objects_v2(Bucket=bucket, MaxKeys=1000).get("Contents", [])
    assert sorted(o["Key"] for o in listed) == sorted(keys)


HANG_SLOTS = 8
HANG_TASKS = 40


async def test_a_hanging_s3_keeps_uploads_bounded_loses_nothing_and_the_gateway_serves(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """S3 stops answering with 40 tasks to store on 8 slots: 8 uploads hang (never more),
    each times out after 1 s and is retried, in-process then by redelivery; the gateway
    answers meanwhile; once S3 answers again every task completes exactly once."""
    with FaultyProxy(s3_server.endpoint_url, hang=True) as proxy:
        env = {
            **r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url),
            "PIXELBUS_R2_TIMEOUT_S": "1",
            "PIXELBUS_STORAGE_RETRY_ATTEMPTS": "2",
            "PIXELBUS_STORAGE_RETRY_BASE_S": "0.2",  # the proxy sees a timed-out request go
            "PIXELBUS_ACK_WAIT_S": "1",  # a delivery (two 1 s tries) outlives its lease
            "PIXELBUS_MAX_DELIVER": "5",
        }
        async with running_stack(nats_server.url, tmp_path, uploader=False, **env) as stack:
            events = await EventLog.open(stack.nc)
            async with uploader_process(stack, proxy, HANG_SLOTS) as uploader:
                rss_before = uploader.rss_now()
                proxy.fail_next()  # from now on S3 answers nothing
                ids, post_s = await create_probes(stack, HANG_TASKS)
                get_s: list[float] = []
                reads = asyncio.create_task(read_tasks(stack, ids, get_s))

                # hung until a delivery spent its tries and was handed back for redelivery
                await events.wait_for(lambda e: isinstance(e, TaskFailed) and not e.final, 20)

                async def saturated() -> bool | None:
                    """Every slot was held by a hung request, and as many were given up."""
                    held = proxy.max_open >= HANG_SLOTS and proxy.abandoned >= HANG_SLOTS
                    return True if held else None

                await eventually(saturated, timeout=10)
                hung_for_s = time.perf_counter()
                proxy.heal()
                reads.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reads
                kv = await stack.kv()
                finals = [await wait_for_state(kv, t, lambda s: s.is_final, 30) for t in ids]
                healed_s = time.perf_counter() - hung_for_s
                deliveries = await uploader_deliveries(stack)
                rss_max = max(uploader.rss_mib)
                in_flight_max = max(uploader.in_flight)
            stored = await read_all_events(stack.nc)
    failures = [e for t in ids for e in stored[t] if isinstance(e, TaskFailed)]
    get_p99, post_p99 = percentile(get_s, 0.99), percentile(post_s, 0.99)
    print(
        f"figure: hanging S3, {HANG_TASKS} tasks on {HANG_SLOTS} slots: max open requests "
        f"{proxy.max_open}, max in-flight gauge {in_flight_max:.0f}, timed out "
        f"{proxy.abandoned}, redeliveries {len(failures)}; uploader RSS {rss_before:.1f} -> "
        f"max {rss_max:.1f} MiB; gateway during the hang: GET p99 {get_p99 * 1000:.1f} ms "
        f"({len(get_s)} GETs), POST p99 {post_p99 * 1000:.1f} ms; all completed "
        f"{healed_s:.1f} s after S3 came back"
    )
    assert all(s.status is TaskStatus.COMPLETED for s in finals)
    # bounded: the slots were all taken by hung requests, and never more
    assert proxy.max_open == HANG_SLOTS and in_flight_max == HANG_SLOTS
    assert rss_max - rss_before < 32
    # the gateway kept answering while uploads hung
    assert get_p99 < 0.5 and post_p99 < 0.5 and len(get_s) >= HANG_TASKS
    # hung uploads timed out, were retried and handed back (never lost, never final)
    assert failures and all(f.retryable and not f.final for f in failures)
    assert {f.code for f in failures} == {"ReadTimeoutError"}
    assert proxy.abandoned >= 2 * len(failures)  # two tries in each delivery handed back
    # in-progress acks held each lease: deliveries are the first ones and the hand-backs
    assert deliveries == HANG_TASKS + len(failures)
    assert proxy.max_open_per_path == 1  # no key was ever written by two deliveries at once
    check_each_stored_once(stored, ids, proxy, s3_server, s3_bucket)


async def test_attempts_exhausted_while_s3_hangs_fail_the_task_as_retryable_storage(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """With S3 hanging for good, a task ends FAILED once its deliveries are spent (here two,
    of one 0.5 s try each), with the timeout named and marked retryable, not pending."""
    with FaultyProxy(s3_server.endpoint_url, hang=True, fail_first=sys.maxsize) as proxy:
        env = {
            **r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url),
            "PIXELBUS_R2_TIMEOUT_S": "0.5",
            "PIXELBUS_STORAGE_RETRY_ATTEMPTS": "1",
            "PIXELBUS_MAX_DELIVER": "2",
        }
        state, failures = await run_probe(nats_server, tmp_path, env)
    print(f"figure: S3 hanging for good: task {state.status} after {len(failures)} deliveries")
    assert state.status is TaskStatus.FAILED and state.error is not None
    assert state.error.code == "ReadTimeoutError" and state.error.retryable
    assert state.error.message.startswith("r2: cannot reach ")
    assert [(f.final, f.retryable) for f in failures] == [(False, True), (True, True)]
    # the start-up check, then one PutObject per delivery: each hung until its client gave up
    assert (proxy.requests, proxy.abandoned, proxy.forwarded) == (3, 3, {})


SLOW_SLOTS = 16
SLOW_TASKS = 48
SLOW_DELAY_S = 1.2


async def test_a_slow_s3_bounds_throughput_by_the_uploaders_slots(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """Every S3 request takes 1.2 s, more than twice the uploader's lease (0.5 s, the
    shortest the setting allows): the 16 slots are all used and no more (the S3 client
    has a connection for each), throughput is what they allow, memory stays flat, and
    each upload is delivered once (in-progress acks keep the lease of a slow upload)."""
    with FaultyProxy(s3_server.endpoint_url, delay_s=SLOW_DELAY_S) as proxy:
        env = {
            **r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url),
            "PIXELBUS_R2_TIMEOUT_S": "10",
            "PIXELBUS_ACK_WAIT_S": "0.5",  # heartbeats every 0.5 s lost it (the old floor)
        }
        async with running_stack(nats_server.url, tmp_path, uploader=False, **env) as stack:
            async with uploader_process(stack, proxy, SLOW_SLOTS) as uploader:
                rss_before = uploader.rss_now()
                began = time.perf_counter()
                ids, _ = await create_probes(stack, SLOW_TASKS)
                kv = await stack.kv()
                finals = [await wait_for_state(kv, t, lambda s: s.is_final, 30) for t in ids]
                elapsed_s = time.perf_counter() - began
                deliveries = await uploader_deliveries(stack)
                rss_after = uploader.rss_now()
                rss_max = max(uploader.rss_mib)
            stored = await read_all_events(stack.nc)
    rate = SLOW_TASKS / elapsed_s
    bound = SLOW_SLOTS / SLOW_DELAY_S
    print(
        f"figure: slow S3 ({SLOW_DELAY_S} s a request), {SLOW_TASKS} tasks on {SLOW_SLOTS} "
        f"slots: {rate:.1f} tasks/s (bound {bound:.1f}), max open requests {proxy.max_open}, "
        f"uploader RSS {rss_before:.1f} -> {rss_after:.1f} MiB (max {rss_max:.1f})"
    )
    assert all(s.status is TaskStatus.COMPLETED for s in finals)
    assert proxy.max_open == SLOW_SLOTS  # every slot used, never more
    assert rate <= bound * 1.05
    assert rss_max - rss_before < 32
    assert deliveries == SLOW_TASKS  # none redelivered while it ran
    assert proxy.max_open_per_path == 1
    check_each_stored_once(stored, ids, proxy, s3_server, s3_bucket)
