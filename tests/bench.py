"""``just bench``: pixelbus against the tools users would pick instead, on this machine.

One invocation measures, one system at a time (only that system's processes running):

- **pixelbus**: the services of ``tools/devstack.py``'s ``SERVICES``, each a process started
  as ``./dev up`` starts it, on the bench's own nats-server, local storage in a temp dir
  on a RAM disk (``--storage disk``: on disk; see ``outputs_dir``), ``PIXELBUS_LOG_LEVEL=WARNING``, each with its own ``PIXELBUS_PROBE_PORT`` (for
  ``/metrics``); probe tasks created over HTTP;
- **Celery + Redis**: a prefork worker (concurrency 2), tuned as its guide says for short
  tasks (``tests/bench_celery_app.py``), broker and results on the bench's redis-server;
  ``.delay()`` then ``.get()``;
- **arq tuned**: a worker polling every 5 ms (``tests/bench_arq_app.py``), in a virtualenv
  the bench creates under ``.pixelbus/bench/`` (arq pins redis-py below 6); the client's
  ``job.result(poll_delay=0.005)``;
- **bare JetStream**: publish → pull → ack → reply on the same nats-server
  (``tests/bench_jetstream_worker.py``): the floor under any task system on NATS.

Every system is measured the same way, by ``tests/bench_loadgen.py`` run as a process of
its own with that system's client library (its docstring has the phases and what each
adapter counts as accepted and completed): one in flight, a fixed open-loop rate, and
saturation. The redis-server is Debian's package (installed when missing and running as
root), started on a free port without persistence and stopped afterwards; never the
machine's Redis on 6379.

Then it prints one row per system, the ratios pixelbus / Celery and pixelbus / arq against
the team's goals, pixelbus's secondary one-in-flight figure through the KV bucket, and the
NATS requests and messages per task of each pixelbus service (each service's
``pixelbus_nats_requests_total`` and ``pixelbus_nats_messages_sent_total`` scraped before
and after ``--nats-tasks`` sequential tasks; "n/a" where a service does not expose them).
``--json PATH`` also writes everything as JSON. The machine is shared and small: figures
are noisy; only the ratios within one run mean something.

``Completions``, ``percentile`` and ``wait_health`` stay importable from here for the other
benches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from pixelbus.contracts.task import TaskState
from pixelbus.runtime.state import decode_state
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.bench_loadgen import add_phase_arguments, percentile
from tests.bench_report import (
    LABELS,
    NATS_MESSAGES,
    NATS_REQUESTS,
    format_nats,
    format_ratios,
    format_table,
    per_task,
    ratios,
)

__all__ = ["Completions", "bench_env", "main", "percentile", "wait_health"]

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "tests" / "bench_loadgen.py"
ARQ_APP = ROOT / "tests" / "bench_arq_app.py"
JETSTREAM_WORKER = ROOT / "tests" / "bench_jetstream_worker.py"
ARQ_REQUIREMENTS = ROOT / "tests" / "bench_arq_requirements.txt"
STATE = ROOT / ".pixelbus" / "bench"
RAM_DISK = Path("/dev/shm")
SYSTEMS = ("pixelbus", "celery", "arq", "jetstream")


class BenchError(Exception):
    """Something the bench needs is missing or did not start; the message says what."""


class Completions:
    """Watches the whole state bucket; resolves a future per task when it is final, and
    keeps that final state (what a follower over SSE or the SDK's wait is handed)."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.states: dict[str, TaskState] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def watch(self, kv: object) -> None:
        watcher = await kv.watchall(include_history=False)  # type: ignore[attr-defined]
        while True:
            entry = await watcher.updates(timeout=3600)
            if entry is None or entry.value is None:
                continue
            state = decode_state(entry.value)
            if state.is_final and state.task_id not in self.done:
                now = time.perf_counter()
                self.done[state.task_id] = now
                self.states[state.task_id] = state
                waiter = self.waiters.pop(state.task_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    def wait(self, task_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if task_id in self.done:
            future.set_result(self.done[task_id])
        else:
            self.waiters[task_id] = future
        return future


def wait_health(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gateway exited")
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("gateway did not come up")


def bench_env(nats_url: str, port: int, storage: Path) -> dict[str, str]:
    """The environment of the services a bench starts: this one's, plus its own
    nats-server, the gateway's port, local storage and quiet logs."""
    return {
        **os.environ,
        "NATS_URL": nats_url,
        "PIXELBUS_PORT": str(port),
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": str(storage),
        "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PIXELBUS_LOG_LEVEL": "WARNING",
        "PIXELBUS_PROBE_HOST": "127.0.0.1",
    }


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------


class Processes:
    """The processes of one system under test, each logging to its own file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                env=dict(env if env is not None else os.environ),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as ./dev up: signals reach only whom we send them
            )
        self.running[name] = process
        return process

    def check(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise BenchError(
                    f"{name} exited with {process.returncode}: see {self.log_dir / name}.log"
                )

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def wait_until(ready: Any, what: str, processes: Processes, timeout_s: float = 60) -> None:
    """Polls ``ready()`` while the processes start (a start, not a test's synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check()
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout_s:g} s: see {processes.log_dir}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # our own loopback URL
            return bool(response.status == 200)
    except OSError:
        return False


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


# -- redis-server and the arq virtualenv -------------------------------------------------


def find_redis_server() -> str:
    """Debian's redis-server; installed with apt-get when missing and we are root."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if found:
        return found
    how = "apt-get install -y redis-server"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"redis-server not found: install Debian's package (sudo {how})")
    say(f"redis-server not found: {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "redis-server"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    found = shutil.which("redis-server")
    if not found:
        raise BenchError(f"redis-server not found and `{how}` did not install it")
    return found


class RedisServer:
    """A redis-server of our own: a free loopback port, no persistence, a temp dir."""

    def __init__(self, workdir: Path, processes: Processes) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.processes = processes

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        self.processes.start("redis-server", argv)
        wait_until(lambda: self.command("PING") == b"+PONG", "redis-server", self.processes, 10)

    def command(self, *words: str) -> bytes | None:
        """One command in RESP; the first line of the answer (``None`` if unreachable)."""
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(payload.encode())
                return sock.recv(512).split(b"\r\n", 1)[0]
        except OSError:
            return None


def arq_python() -> Path:
    """The arq virtualenv's interpreter, created (or re-created) to match the pins."""
    venv = STATE / "arq-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-pins"
    want = hashlib.sha256(
        ARQ_REQUIREMENTS.read_bytes() + sys.version.encode() + sys.executable.encode()
    ).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    uv = Path(sys.executable).parent / "uv"
    uv_cmd = str(uv) if uv.exists() else shutil.which("uv")
    if not uv_cmd:
        raise BenchError("uv not found: run ./dev (it installs uv into .venv)")
    say(f"creating the arq virtualenv in {venv.relative_to(ROOT)} ({ARQ_REQUIREMENTS.name})")
    shutil.rmtree(venv, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    steps = [
        [uv_cmd, "venv", "-q", "--python", sys.executable, str(venv)],
        [uv_cmd, "pip", "install", "-q", "--python", str(python), "--require-hashes",
         "-r", str(ARQ_REQUIREMENTS)],
    ]  # fmt: skip
    for step in steps:
        if subprocess.run(step, env=env, check=False).returncode != 0:
            raise BenchError(f"could not create the arq virtualenv: {' '.join(step[:3])} failed")
    stamp.write_text(want)
    return python


# -- the load generator ------------------------------------------------------------------


def loadgen(
    python: Path | str,
    system: str,
    params: Mapping[str, str],
    args: argparse.Namespace,
    **phases: Any,
) -> dict[str, Any]:
    """Runs ``tests/bench_loadgen.py`` for one system; its JSON result."""
    knobs = {
        "warmup": args.warmup,
        "one": args.one,
        "kv-one": 0,
        "rate": args.rate,
        "seconds": args.seconds,
        "tasks": args.tasks,
        "clients": args.clients,
        "timeout": args.timeout,
    } | {key.replace("_", "-"): value for key, value in phases.items()}
    argv = [str(python), str(LOADGEN), "--system", system]
    argv += [f"--param={key}={value}" for key, value in params.items()]
    argv += [f"--{key}={value}" for key, value in knobs.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(argv, stdout=subprocess.PIPE, env=env, cwd=ROOT, check=False)
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"the load generator for {system} failed (exit {done.returncode})")
    return dict(json.loads(lines[-1]))


# -- the systems -------------------------------------------------------------------------


@contextlib.contextmanager
def outputs_dir(kind: str, tmp: Path) -> Iterator[tuple[Path, str]]:
    """Where the bench's pixelbus stores its outputs (local storage), and its name.

    ``memory`` (the default): a RAM disk where there is one, as the peers keep their
    results in Redis's memory. ``disk``: beside the bench's other files. On this kind of
    VM, creating a file on ext4 costs 0.3-0.6 ms when files come one at a time (measured;
    41 us on the RAM disk): one in flight, that would time the disk, not the platform."""
    if kind == "memory" and RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="pixelbus-bench-", dir=RAM_DISK) as name:
            yield Path(name), f"a RAM disk ({RAM_DISK})"
    else:
        yield tmp / "storage", "disk" if kind == "disk" else "disk (no RAM disk here)"


def bench_pixelbus(args: argparse.Namespace, nats: NatsServer, tmp: Path) -> dict[str, Any]:
    with outputs_dir(args.storage, tmp) as (storage, where):
        result = _bench_pixelbus(args, nats, storage)
        result["settings"]["outputs"] = where
        return result


def _bench_pixelbus(args: argparse.Namespace, nats: NatsServer, storage: Path) -> dict[str, Any]:
    from tools.devstack import SERVICES  # another engineer's list: whatever it holds now

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PIXELBUS_WORKER_CONCURRENCY": "128",  # probe tasks are no-ops: let them overlap
        **bench_env(nats.url, port, storage),
    }
    probe_ports = {name: free_port() for name in SERVICES}
    processes = Processes(STATE / "logs")
    say(f"pixelbus: starting {', '.join(SERVICES)} on nats-server {nats.url}")
    try:
        for name, module in SERVICES.items():
            service_env = env | {"PIXELBUS_PROBE_PORT": str(probe_ports[name])}
            processes.start(name, [sys.executable, "-m", module], service_env)
        wait_until(lambda: http_ok(f"{base}/api/health"), "the gateway", processes)
        for name, probe in probe_ports.items():
            try:
                wait_until(
                    lambda probe=probe: http_ok(f"http://127.0.0.1:{probe}/readyz"),
                    f"{name}'s /readyz",
                    processes,
                    30,
                )
            except BenchError as exc:
                say(f"pixelbus: {exc}; measuring anyway")
        params = {"base_url": base, "nats_url": nats.url}
        result = loadgen(sys.executable, "pixelbus", params, args, kv_one=args.kv_one)
        # NATS work per task: each service's counters around K sequential tasks.
        time.sleep(1)  # let the last saturation events settle (projection, acks)
        before = {name: scrape(probe) for name, probe in probe_ports.items()}
        loadgen(
            sys.executable, "pixelbus", params, args,
            warmup=0, one=args.nats_tasks, rate=0, tasks=0,
        )  # fmt: skip
        time.sleep(0.2)  # the last task's trailing acks
        after = {name: scrape(probe) for name, probe in probe_ports.items()}
        result["nats_per_task"] = {
            "tasks": args.nats_tasks,
            "services": {
                name: {
                    "requests": per_task(before[name], after[name], NATS_REQUESTS, args.nats_tasks),
                    "messages": per_task(before[name], after[name], NATS_MESSAGES, args.nats_tasks),
                    "metrics_reachable": after[name] is not None,
                }
                for name in probe_ports
            },
        }
        result["services"] = list(SERVICES)
        result["settings"] = {
            "worker_concurrency": env["PIXELBUS_WORKER_CONCURRENCY"],
        }
        return result
    finally:
        processes.stop()


def bench_peer(
    args: argparse.Namespace,
    system: str,
    worker: list[str],
    params: Mapping[str, str],
    python: Path | str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Start a peer's worker (``worker`` + ``--ready FILE``), wait for it, load it."""
    processes = Processes(STATE / "logs")
    ready = STATE / f"{system}.ready"
    ready.unlink(missing_ok=True)
    try:
        processes.start(f"{system}-worker", [*worker, "--ready", str(ready)], env)
        wait_until(ready.exists, f"the {LABELS[system]} worker", processes)
        return loadgen(python, system, params, args)
    finally:
        processes.stop()


def bench_celery(args: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    redis.command("FLUSHALL")
    say(f"Celery: starting a prefork worker (concurrency 2) on redis-server :{redis.port}")
    worker = [sys.executable, "-m", "tests.bench_celery_app", "--redis", redis.url,
              "--concurrency", "2"]  # fmt: skip
    return bench_peer(args, "celery", worker, {"redis_url": redis.url})


def bench_arq(args: argparse.Namespace, redis: RedisServer, python: Path) -> dict[str, Any]:
    redis.command("FLUSHALL")
    say(f"arq: starting a worker (5 ms polls, max_jobs {args.arq_max_jobs}) on :{redis.port}")
    worker = [str(python), str(ARQ_APP), "--redis-port", str(redis.port),
              "--max-jobs", str(args.arq_max_jobs)]  # fmt: skip
    params = {"redis_host": "127.0.0.1", "redis_port": str(redis.port)}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return bench_peer(args, "arq", worker, params, python, env)


def bench_jetstream(args: argparse.Namespace, nats: NatsServer) -> dict[str, Any]:
    say(f"bare JetStream: starting the reference worker on nats-server {nats.url}")
    worker = [sys.executable, str(JETSTREAM_WORKER), "--nats", nats.url]
    return bench_peer(args, "jetstream", worker, {"nats_url": nats.url})


# -- the report --------------------------------------------------------------------------


def errors_report(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for system, result in results.items():
        label = LABELS.get(system, system)
        saturation = result.get("saturation") or {}
        if saturation:
            lines.append(
                f"{label}: saturation {saturation['accepted']}/{saturation['tasks']} accepted, "
                f"{saturation['completed']} completed in {saturation.get('seconds') or 0:.2f} s"
            )
        for phase in ("one", "kv_one", "rate", "saturation"):
            data = result.get(phase) or {}
            for part in (data, *(v for v in data.values() if isinstance(v, dict))):
                if part.get("errors"):
                    lines.append(
                        f"  ERROR {label} {phase}: {part['errors']} task(s) failed: "
                        + "; ".join(part.get("error_samples", []))
                    )
        lag = (result.get("rate") or {}).get("worst_send_lag_ms")
        if lag is not None and lag > 10:
            lines.append(f"  note: {label}'s fixed-rate sends lagged up to {lag:.0f} ms")
    return lines


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    outputs = (results.get("pixelbus") or {}).get("settings", {}).get("outputs", "disk")
    notes = {
        "pixelbus": "HTTP create -> worker -> uploader -> TaskCompleted seen on its subject;"
        f" outputs on {outputs}",
        "celery": "prefork 2, prefetch x64, .delay() then .get() (Redis pub/sub results)",
        "arq": f"5 ms polls (worker and job.result), max_jobs {args.arq_max_jobs}",
        "jetstream": "publish (acked) -> pull -> ack -> reply, same nats-server",
    }
    out = [
        f"{args.tasks} tasks by {args.clients} clients at saturation; {args.one} one in flight; "
        f"{args.rate:g} tasks/s for {args.seconds:g} s",
        "",
        format_table(results, notes),
        "",
        format_ratios(results),
    ]
    pixelbus = results.get("pixelbus") or {}
    kv = pixelbus.get("kv_one") or {}
    if kv.get("kv", {}).get("p50_ms") is not None:
        subject, through_kv = kv["subject"], kv["kv"]
        out += [
            "",
            f"pixelbus one in flight, secondary ({through_kv['ok']} tasks, each timed twice): "
            f"TaskCompleted on its subject p50 {subject['p50_ms']:.2f} / p99 "
            f"{subject['p99_ms']:.2f} ms; COMPLETED in a KV watch (what API clients see) "
            f"p50 {through_kv['p50_ms']:.2f} / p99 {through_kv['p99_ms']:.2f} ms",
        ]
        hops = kv.get("hops") or {}
        if hops:
            out.append(
                "  per hop, medians from the stream's store times: POST -> TaskCreated "
                f"{hops['http_to_created']:.2f} ms, -> OutputsReady (worker) "
                f"{hops['created_to_outputs']:.2f} ms, -> TaskCompleted (uploader) "
                f"{hops['outputs_to_completed']:.2f} ms"
            )
    nats = pixelbus.get("nats_per_task")
    if nats:
        out += ["", format_nats(nats["services"], nats["tasks"])]
    problems = errors_report(results)
    if problems:
        out += ["", *problems]
    return "\n".join(out)


def log_summary(log_dir: Path) -> list[str]:
    lines = []
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        if not text:
            continue
        lines.append(f"  {log.name}: {len(text)} lines, last: {text[-1][:160]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="pixelbus vs Celery+Redis vs arq vs bare JetStream, same load generator"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    add_phase_arguments(parser, tasks=5000, kv_one=100)
    parser.add_argument("--nats-tasks", type=int, default=50, help="tasks for NATS per task")
    parser.add_argument(
        "--storage",
        choices=("memory", "disk"),
        default="memory",
        help="pixelbus's outputs on a RAM disk (as the peers' results in Redis) or on disk",
    )
    parser.add_argument("--arq-max-jobs", type=int, default=10, help="arq worker max_jobs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s): {', '.join(unknown)}")

    shutil.rmtree(STATE / "logs", ignore_errors=True)
    STATE.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    infra = Processes(STATE / "logs")
    try:
        with tempfile.TemporaryDirectory(prefix="pixelbus-bench-") as tmp_name:
            tmp = Path(tmp_name)
            nats = redis = arq = None
            if {"celery", "arq"} & set(systems):
                redis = RedisServer(tmp / "redis", infra)
                redis.start()
            if "arq" in systems:
                arq = arq_python()
            if {"pixelbus", "jetstream"} & set(systems):
                nats = NatsServer(tmp / "nats")
                nats.start()
            try:
                for system in systems:
                    began = time.monotonic()
                    try:
                        if system == "pixelbus":
                            assert nats is not None
                            results[system] = bench_pixelbus(args, nats, tmp)
                        elif system == "celery":
                            assert redis is not None
                            results[system] = bench_celery(args, redis)
                        elif system == "arq":
                            assert redis is not None and arq is not None
                            results[system] = bench_arq(args, redis, arq)
                        else:
                            assert nats is not None
                            results[system] = bench_jetstream(args, nats)
                    except BenchError as exc:
                        say(str(exc))
                        results[system] = {"system": system, "error": str(exc)}
                    say(f"{LABELS[system]} done in {time.monotonic() - began:.0f} s")
            finally:
                if nats is not None:
                    nats.stop()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        infra.stop()
    load_after = os.getloadavg()[0]
    print(report(results, args))
    print(
        f"\nmachine: {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, "
        f"{load_after:.1f} after (shared: figures are noisy, ratios within one run less so); "
        f"{time.monotonic() - started:.0f} s in all"
    )
    logs = log_summary(STATE / "logs")
    if logs:
        print(f"process logs in {(STATE / 'logs').relative_to(ROOT)}/:", *logs, sep="\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "machine": {
                        "cpus": os.cpu_count(),
                        "load_before": load_before,
                        "load_after": load_after,
                    },
                    "systems": results,
                    "ratios": ratios(results),
                },
                indent=2,
            )
        )
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
