"""``just soak``: the stack at a steady rate for a long time, watched for leaks.

The same stack as ``just chaos`` (``tests/chaos.py``: processes under a supervisor; here
nothing is killed) runs probe tasks at ``--rate`` and face swaps at ``--swap-rate`` for
``--duration`` seconds (30 minutes by default). Every ``--every`` seconds it samples each
process's resident memory (``VmRSS``) and open descriptors (``/proc/<pid>/fd``), the
server's consumer count and store bytes (its ``/jsz`` monitoring endpoint) and the bytes
and entries of every KV bucket. Afterwards it prints the samples and, per series, the
least-squares slope over the run after ``--warmup`` seconds (the projector's caches are
made small enough to fill within it), per hour and beside the
series' own noise (the residuals' standard deviation): a leak is a slope whose growth
over the run is well above its noise. It exits 1 when a process died, a task did not
complete, or a process's RSS or descriptors grew faster than ``--max-rss-mib-per-h`` /
``--max-fds-per-h``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.chaos import ROLES, Load, Member, Supervisor, service_env, settle, swap_input, wait_up
from tests.webhook_receiver import webhook_receiver

#: The projector's caches small enough to fill within the warm-up: after it, a bounded
#: cache is flat and only a leak still grows.
CACHES = {"PIXELBUS_PROJECTOR_CACHE_BYTES": str(4 << 20)}


@dataclass
class Samples:
    """Time series by name: ``(seconds since start, value)``."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, name: str, at: float, value: float) -> None:
        self.series.setdefault(name, []).append((at, value))


def process_figures(pid: int) -> tuple[float, int]:
    """RSS in MiB and open descriptors of a live process."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def slope_per_hour(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (per hour) and the residuals' standard deviation."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    fit = statistics.linear_regression(xs, ys)
    residuals = [y - (fit.slope * x + fit.intercept) for x, y in points]
    return fit.slope * 3600, statistics.pstdev(residuals)


async def sample(
    samples: Samples, supervisor: Supervisor, nats_server: NatsServer, started: float
) -> None:
    at = time.monotonic() - started
    for member in supervisor.members:
        if member.process is not None and member.process.poll() is None:
            rss, fds = process_figures(member.process.pid)
            samples.add(f"{member.name} rss MiB", at, rss)
            samples.add(f"{member.name} fds", at, fds)
    if nats_server.pid is not None:
        rss, fds = process_figures(nats_server.pid)
        samples.add("nats-server rss MiB", at, rss)
        samples.add("nats-server fds", at, fds)
    url = f"{nats_server.monitor_url}/jsz"
    jsz = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(url, timeout=5)))
    samples.add("nats consumers", at, jsz["consumers"])
    samples.add("nats store MiB", at, jsz["storage"] / 2**20)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith("KV_"):
                samples.add(f"kv {name[3:]} KiB", at, info.state.bytes / 1024)
    finally:
        await nc.close()


async def soak(args: argparse.Namespace, work: Path) -> tuple[Samples, list[str], dict[str, Any]]:
    nats_server = NatsServer(work / "nats")
    nats_server.start()
    ports = [free_port() for _ in range(ROLES["gateway"][1])]
    gateways = [f"http://127.0.0.1:{port}" for port in ports]
    members = [
        Member(role, f"{role}-{i + 1}", {**service_env(
            nats_server.url, work / "storage", ports[i] if role == "gateway" else ports[0],
            gateways[0]), **CACHES})
        for role, (_, count) in ROLES.items()
        for i in range(count)
    ]  # fmt: skip
    (work / "logs").mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(nats_server, members, work / "logs")
    for member in members:
        supervisor.start(member)
    samples = Samples()
    problems: list[str] = []
    try:
        async with webhook_receiver() as receiver:
            await wait_up(gateways, 90)
            load = Load(gateways, receiver.url, swap_input())
            started = time.monotonic()
            print(f"soak: stack up; {args.duration:g} s at {args.rate:g}/s", flush=True)

            async def sampler() -> None:
                while True:
                    await sample(samples, supervisor, nats_server, started)
                    await asyncio.sleep(args.every)  # the sampling period

            sampling = asyncio.create_task(sampler())
            try:
                await load.run(args.duration, args.rate, args.swap_rate)
            finally:
                sampling.cancel()
            await sample(samples, supervisor, nats_server, started)
            task_ids = [s.task_id for s in load.submitted if s.task_id]
            states = await settle(nats_server.url, task_ids, timeout_s=120)
            done = sum(1 for s in states.values() if s.status is TaskStatus.COMPLETED)
            if done != len(load.submitted):
                problems.append(f"{len(load.submitted) - done} of the tasks did not complete")
            totals = {"tasks": len(load.submitted), "completed": done}
    finally:
        died = {m.name: m.starts - 1 for m in members if m.starts > 1 or not _running(m)}
        supervisor.stop()
    if died:
        problems.append(f"processes died during the soak: {died}")
    return samples, problems, totals


def _running(member: Member) -> bool:
    return member.process is not None and member.process.poll() is None


def report(samples: Samples, args: argparse.Namespace) -> list[str]:
    """Prints each series (first, last, slope per hour vs noise); the leaks found."""
    leaks: list[str] = []
    print(f"  {'series':<34} {'first':>9} {'last':>9} {'slope/h':>9} {'noise':>8}")
    for name, points in sorted(samples.series.items()):
        steady = [(x, y) for x, y in points if x >= args.warmup] or points
        slope, noise = slope_per_hour(steady) if len(steady) >= 3 else (0.0, 0.0)
        print(
            f"  {name:<34} {points[0][1]:>9.1f} {points[-1][1]:>9.1f} {slope:>9.2f} {noise:>8.2f}"
        )
        limit = args.max_rss_mib_per_h if name.endswith("rss MiB") else args.max_fds_per_h
        if name.endswith(("rss MiB", " fds")) and not name.startswith("nats") and slope > limit:
            leaks.append(f"{name}: {slope:.2f}/h > {limit:g}/h")
    return leaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds of steady load")
    parser.add_argument("--rate", type=float, default=20, help="probe tasks per second")
    parser.add_argument("--swap-rate", type=float, default=0.2, help="face swaps per second")
    parser.add_argument("--every", type=float, default=60, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=300, help="seconds left out of slopes")
    parser.add_argument("--max-rss-mib-per-h", type=float, default=20)
    parser.add_argument("--max-fds-per-h", type=float, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pixelbus-soak-") as tmp:
        samples, problems, totals = asyncio.run(soak(args, Path(tmp)))
    print(f"soak: {totals}")
    problems += report(samples, args)
    if args.json:
        args.json.write_text(json.dumps({"totals": totals, "series": samples.series}, indent=1))
    for problem in problems:
        print(f"soak FAILED: {problem}", file=sys.stderr)
    print("soak: " + ("FAILED" if problems else "passed"), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
