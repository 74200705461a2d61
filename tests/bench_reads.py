"""``just bench-reads``: what reads cost with few tasks and with many, in one run.

Starts its own nats-server, the gateway and the projector as processes (no worker of the
``comm`` pool runs: its tasks stay pending, as behind a paused pool). It fills the stream
with events published straight to JetStream, as the services would have published them
(``TaskCreated`` + ``TaskCompleted`` for final tasks, ``TaskCreated`` alone for pending
ones), waits for the projector to fold them all, then measures, first with ``--small``
tasks and again after topping up to ``--large``:

- ``GET /api/tasks/{id}`` of a final task, and of a pending one (with its queue position;
  a pending task is read twice: its first read counts its rank, the repeat does not);
- a page of ``GET /api/tasks`` (``--page`` tasks, walking the cursor);
- ``--followers`` concurrent SSE followers of pending tasks, idle for ``--window`` s: the
  NATS requests per second the gateway makes meanwhile (its
  ``pixelbus_nats_requests_total``), the server's consumer count before, during and after,
  the gateway's CPU and its RSS growth per follower.

It prints both columns, the ratios against the goals, and the gateway's and projector's
RSS, checked against ``--rss-bound-mb``. The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client

from pixelbus.contracts.events import TaskCompleted, TaskCreated, event_id
from pixelbus.contracts.subjects import PROJECTOR_CONSUMER, TASK_STREAM
from pixelbus.contracts.task import StoredOutput
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.bench import STATE, Processes, bench_env, http_ok, say, scrape, wait_until
from tests.bench_loadgen import percentile
from tests.bench_report import NATS_REQUESTS, metric_total

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}}


def _created(task_id: str, environment: str, workflow: str, at: datetime) -> TaskCreated:
    return TaskCreated(
        event_id=event_id(task_id, "created"),
        task_id=task_id,
        occurred_at=at,
        workflow=workflow,
        environment=environment,
        input_data={"wf_json": GRAPH},
        owner="anonymous",
    )


def _completed(task_id: str, at: datetime) -> TaskCompleted:
    output = StoredOutput(
        filename="probe.json",
        content_type="application/json",
        size=2,
        url=f"http://127.0.0.1/files/{task_id}/probe.json",
        key=f"{task_id}/probe.json",
        provider="local",
    )
    return TaskCompleted(
        event_id=event_id(task_id, "completed"),
        task_id=task_id,
        occurred_at=at,
        attempt=1,
        outputs=(output,),
    )


async def fill(nc: Client, final: int, pending: int, start: int) -> tuple[list[str], list[str]]:
    """Publish ``final`` finished and ``pending`` queued tasks; their ids."""
    publisher = EventPublisher(nc.jetstream())
    finals = [f"task_rf{start + n:07d}" for n in range(final)]
    pendings = [f"task_rp{start + n:07d}" for n in range(pending)]
    now = datetime.now(UTC)
    gate = asyncio.Semaphore(512)

    async def one(task_id: str, done: bool) -> None:
        async with gate:
            env, wf = ("face_swap", "probe") if done else ("comm", "bench")
            await publisher.publish(_created(task_id, env, wf, now), environment=env, workflow=wf)
            if done:
                await publisher.publish(_completed(task_id, now), environment=env, workflow=wf)

    jobs = [(t, True) for t in finals] + [(t, False) for t in pendings]
    random.shuffle(jobs)  # pending tasks spread over the stream, as in real life
    for begin in range(0, len(jobs), 5000):
        await asyncio.gather(*(one(t, d) for t, d in jobs[begin : begin + 5000]))
    return finals, pendings


async def projected(nc: Client, timeout_s: float = 900) -> None:
    """Wait for the projector to have folded everything (its consumer drained)."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await js.consumer_info(TASK_STREAM, PROJECTOR_CONSUMER)
        if not info.num_pending and not info.num_ack_pending:
            return
        await asyncio.sleep(0.5)  # a bench waiting on a backlog, not a test
    raise TimeoutError("the projector did not catch up")


async def timed(http: httpx.AsyncClient, paths: list[str]) -> list[float]:
    times = []
    for path in paths:
        began = time.perf_counter()
        answer = await http.get(path)
        times.append((time.perf_counter() - began) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:200]}")
    return times


async def list_pages(http: httpx.AsyncClient, pages: int, size: int) -> list[float]:
    times: list[float] = []
    cursor = None
    while len(times) < pages:
        params: dict[str, Any] = {"limit": size, **({"before": cursor} if cursor else {})}
        began = time.perf_counter()
        answer = await http.get("/api/tasks", params=params)
        times.append((time.perf_counter() - began) * 1000)
        body = answer.json()
        assert len(body["tasks"]) == size, body
        cursor = body["next"]
    return times


def proc(pid: int) -> tuple[float, float]:
    """CPU seconds and RSS (MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(
        int(line.split()[1]) / 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss


async def followers(
    http: httpx.AsyncClient, nc: Client, base: str, pids: dict[str, int], probe: int,
    ids: list[str], window_s: float,
) -> dict[str, float]:  # fmt: skip
    js = nc.jetstream()
    consumers_before = (await js.stream_info(TASK_STREAM)).state.consumer_count
    _, rss_before = proc(pids["gateway"])
    started = asyncio.Event()
    ready = 0

    async def follow(task_id: str) -> None:
        nonlocal ready
        async with http.stream("GET", f"/api/tasks/{task_id}/events") as answer:
            async for line in answer.aiter_lines():
                if line.startswith("event: state"):
                    ready += 1
                    if ready == len(ids):
                        started.set()
                    break
            async for _ in answer.aiter_lines():
                pass

    tasks = [asyncio.create_task(follow(t)) for t in ids]
    try:
        await asyncio.wait_for(started.wait(), 120)
        consumers_during = (await js.stream_info(TASK_STREAM)).state.consumer_count
        requests_before = metric_total(scrape(probe) or "", NATS_REQUESTS) or 0.0
        cpu_before, rss_with = proc(pids["gateway"])
        began = time.monotonic()
        await asyncio.sleep(window_s)  # the measurement window: idle followers
        elapsed = time.monotonic() - began
        cpu_after, _ = proc(pids["gateway"])
        requests_after = metric_total(scrape(probe) or "", NATS_REQUESTS) or 0.0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    consumers_after = (await js.stream_info(TASK_STREAM)).state.consumer_count
    return {
        "requests_per_s": (requests_after - requests_before) / elapsed,
        "gateway_cpu": (cpu_after - cpu_before) / elapsed,
        "rss_kb_per_follower": (rss_with - rss_before) * 1024 / len(ids),
        "consumers_before": consumers_before,
        "consumers_during": consumers_during,
        "consumers_after": consumers_after,
    }


async def measure(
    args: argparse.Namespace, nc: Client, base: str, pids: dict[str, int], probe: int,
    finals: list[str], pendings: list[str],
) -> dict[str, Any]:  # fmt: skip
    gc.collect()  # the fill's garbage, collected before anything is timed in this process
    limits = httpx.Limits(max_connections=args.followers + 50)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        # warm-up: the server's caches of the buckets' blocks, the gateway's code paths
        await timed(http, [f"/api/tasks/{t}" for t in random.sample(finals, args.warmup)])
        final_ms = await timed(http, [f"/api/tasks/{t}" for t in random.sample(finals, args.reads)])
        picked = random.sample(pendings, min(args.reads, len(pendings)))
        first_ms = await timed(http, [f"/api/tasks/{t}" for t in picked])
        again_ms = await timed(http, [f"/api/tasks/{t}" for t in picked])
        list_ms = await list_pages(http, args.pages, args.page)
        follow = await followers(
            http, nc, base, pids, probe, random.sample(pendings, args.followers), args.window
        )
    return {
        "get_final": percentile(final_ms, 0.5),
        "get_pending_first": percentile(first_ms, 0.5),
        "get_pending": percentile(again_ms, 0.5),
        "list_page": percentile(list_ms, 0.5),
        **follow,
        "gateway_rss_mb": proc(pids["gateway"])[1],
        "projector_rss_mb": proc(pids["projector"])[1],
    }


def report(small: dict[str, Any], large: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows = [
        ("GET final task p50 (ms)", "get_final", ".2f"),
        ("GET pending task p50 (ms), first read", "get_pending_first", ".2f"),
        ("GET pending task p50 (ms), again", "get_pending", ".2f"),
        (f"GET /api/tasks page of {args.page} p50 (ms)", "list_page", ".2f"),
        (f"{args.followers} idle SSE followers: NATS requests/s", "requests_per_s", ".1f"),
        ("  their gateway CPU (cores)", "gateway_cpu", ".3f"),
        ("  gateway RSS per follower (KB)", "rss_kb_per_follower", ".1f"),
        ("  consumers before / during / after", None, ""),
        ("gateway RSS (MB)", "gateway_rss_mb", ".0f"),
        ("projector RSS (MB)", "projector_rss_mb", ".0f"),
    ]
    out = [f"{'':46s} {args.small:>12,} {args.large:>12,}  tasks"]
    for label, key, fmt in rows:
        if key is None:
            cells = [
                f"{r['consumers_before']}/{r['consumers_during']}/{r['consumers_after']}"
                for r in (small, large)
            ]
        else:
            cells = [format(r[key], fmt) for r in (small, large)]
        out.append(f"{label:46s} {cells[0]:>12s} {cells[1]:>12s}")
    goals = [
        *(
            (f"{key} at {args.large:,} <= 1.5x at {args.small:,}", large[key] / small[key], 1.5)
            for key in ("get_final", "get_pending", "list_page")
        ),
        ("GET pending <= 2x GET final", large["get_pending"] / large["get_final"], 2.0),
        ("list page <= 3x GET", large["list_page"] / large["get_final"], 3.0),
    ]
    out.append("")
    for label, ratio, bound in goals:
        out.append(f"{label:46s} {ratio:6.2f}x  {'met' if ratio <= bound else 'MISSED'}")
    flat = all(r["consumers_before"] == r["consumers_during"] for r in (small, large))
    out.append(f"{'no consumer per follower':46s} {'met' if flat else 'MISSED'}")
    for name in ("gateway", "projector"):
        rss = large[f"{name}_rss_mb"]
        verdict = "within" if rss <= args.rss_bound_mb else "OVER"
        out.append(f"{name} RSS after {args.large:,} tasks: {rss:.0f} MB, {verdict} the "
                   f"{args.rss_bound_mb} MB bound")  # fmt: skip
    return out


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="pixelbus-reads-") as tmp_name:
        tmp = Path(tmp_name)
        server = NatsServer(tmp / "nats")
        server.start()
        port, probe = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        env = bench_env(server.url, port, tmp / "storage")
        processes = Processes(STATE / "reads-logs")
        try:
            processes.start(
                "gateway",
                [sys.executable, "-m", "pixelbus.gateway"],
                env | {"PIXELBUS_PROBE_PORT": str(probe)},
            )
            wait_until(lambda: http_ok(f"{base}/api/health"), "the gateway", processes)
            processes.start("projector", [sys.executable, "-m", "pixelbus.projector"], env)
            pids = {name: p.pid for name, p in processes.running.items()}
            nc = await nats.connect(server.url)
            try:
                pending = min(args.pending, args.small // 2)
                say(f"filling {args.small:,} tasks ({pending:,} pending)")
                finals, pendings = await fill(nc, args.small - pending, pending, 0)
                await projected(nc)
                small = await measure(args, nc, base, pids, probe, finals, pendings)
                more_pending = args.pending - pending
                say(f"filling up to {args.large:,} tasks ({args.pending:,} pending)")
                began = time.monotonic()
                more_finals, more_pendings = await fill(
                    nc, args.large - args.small - more_pending, more_pending, args.small
                )
                await projected(nc)
                say(f"filled and projected in {time.monotonic() - began:.0f} s")
                await asyncio.sleep(args.settle)  # let the server finish writing behind
                large = await measure(
                    args, nc, base, pids, probe, finals + more_finals, pendings + more_pendings
                )
            finally:
                await nc.close()
        finally:
            processes.stop()
            server.stop()
    lines = report(small, large, args)
    print("\n".join(lines))
    missed = any("MISSED" in line or "OVER" in line for line in lines)
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2_000, help="tasks of the first column")
    parser.add_argument("--large", type=int, default=200_000, help="tasks of the second")
    parser.add_argument("--pending", type=int, default=5_000, help="pending tasks in all")
    parser.add_argument("--reads", type=int, default=300, help="GETs of each kind")
    parser.add_argument("--warmup", type=int, default=300, help="GETs before measuring")
    parser.add_argument("--settle", type=float, default=10, help="seconds after a fill")
    parser.add_argument("--pages", type=int, default=50, help="list pages")
    parser.add_argument("--page", type=int, default=20, help="tasks per list page")
    parser.add_argument("--followers", type=int, default=1_000, help="idle SSE followers")
    parser.add_argument("--window", type=float, default=10, help="seconds they idle")
    parser.add_argument("--rss-bound-mb", type=int, default=400, help="gateway/projector RSS")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
