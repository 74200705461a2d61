"""``just chaos``: the real stack under a steady load while processes are ``kill -9``ed.

The stack runs as processes, as ``./dev up`` runs it: its own nats-server (default
``sync_interval``), two gateways, the projector, the webhook dispatcher, two face-swap
workers (built-in engine) and two storage uploaders (``local`` storage), under a
supervisor that restarts whatever dies. Meanwhile:

- **load**: probe tasks at ``--rate`` per second and real face swaps (the shipped
  photographs) at ``--swap-rate``, each created with its own ``Idempotency-Key`` and a
  webhook to a local receiver; a client retries the same key on connection errors, 5xx
  and 429 (after ``Retry-After``, at most 1 s) until it gets an answer, on the other
  gateway when one is down;
- **chaos**: every ``--kill-every`` seconds (a random pause in the range) one process
  gets ``SIGKILL``: the roles take turns in a shuffled order (so kills per role stay
  even), one live process of the role drawn at random; every ``--nats-every``-th kill is
  nats-server's.

When the load ends the killing stops, the stack settles, and the run checks and prints:
tasks created, kills per role, tasks not COMPLETED, tasks with more than one
``TaskCompleted`` in the stream, idempotency keys with more than one task, outputs
missing or unreadable (each downloaded and decoded), webhooks not delivered (each
task's ``completed`` webhook by its ``webhook-id``; a repeated id is counted apart: the
receiver drops it, as Standard Webhooks asks), and the time from create to final (p50,
max) as the system saw it (the task's ``created_at`` to ``finished_at``) and as clients
saw it (first try to the task's ``finished_at``). It exits 1 when anything was lost or
doubled, or the slowest task took longer than ``--max-final-s``.

``tests/test_chaos.py`` runs a short variant in ``./dev test``; the long one on demand,
e.g. ``./dev chaos --duration 600``. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from PIL import Image

from pixelbus.contracts.events import TaskCompleted, TaskCreated
from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.projector.rebuild import read_all_events
from pixelbus.runtime.state import decode_state
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.bench_loadgen import percentile
from tests.conftest import package_file
from tests.webhook_receiver import Receiver, webhook_receiver

ROOT = Path(__file__).resolve().parent.parent
NATS_ROLE = "nats-server"
#: role → (module, how many processes)
ROLES: dict[str, tuple[str, int]] = {
    "gateway": ("pixelbus.gateway", 2),
    "projector": ("pixelbus.projector", 1),
    "webhooks": ("pixelbus.webhooks", 1),
    "faceswap-worker": ("pixelbus.faceswap_worker", 2),
    "storage-uploader": ("pixelbus.storage_uploader", 2),
}
PROBE = {"workflow": "probe", "environment": "face_swap"}


@dataclass
class Member:
    """One supervised process: its role, its own environment, the running process."""

    role: str
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0


@dataclass
class Supervisor:
    """Starts every member and restarts whichever died (killed or crashed)."""

    nats: NatsServer
    members: list[Member]
    log_dir: Path
    kills: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)

    def start(self, member: Member) -> None:
        with open(self.log_dir / f"{member.name}.log", "ab") as log:
            member.process = subprocess.Popen(
                [sys.executable, "-m", ROLES[member.role][0]],
                env=member.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        member.starts += 1

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart what died until ``stop``; nats-server first, on its port and store."""
        while not stop.is_set():
            if not self.nats.running:
                await asyncio.to_thread(self.nats.start)
                self.restarts[NATS_ROLE] += 1
            for member in self.members:
                if member.process is None or member.process.poll() is not None:
                    if member.process is not None:
                        self.restarts[member.role] += 1
                    self.start(member)
            await asyncio.sleep(0.05)  # a supervisor's poll, not a test's synchronisation

    def kill_one(self, role: str, rng: random.Random) -> bool:
        """SIGKILL one live process of ``role``; False when none is up right now."""
        if role == NATS_ROLE:
            if not self.nats.running:
                return False
            self.nats.kill()
        else:
            alive = [m for m in self.members if m.role == role and _alive(m)]
            if not alive:
                return False
            victim = rng.choice(alive)
            assert victim.process is not None
            victim.process.kill()
            victim.process.wait()
        self.kills[role] += 1
        return True

    def stop(self) -> None:
        for member in self.members:
            if _alive(member):
                assert member.process is not None
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait()
        self.nats.stop()


def victims(rng: random.Random, nats_every: int) -> Iterator[str]:
    """The roles to kill, in turn: every service role once per round, in a random order,
    and nats-server every ``nats_every``-th kill (so the kills per role stay even)."""
    count = 0
    while True:
        order = list(ROLES)
        rng.shuffle(order)
        for role in order:
            count += 1
            if nats_every and count % nats_every == 0:
                yield NATS_ROLE
                count += 1
            yield role


def _alive(member: Member) -> bool:
    return member.process is not None and member.process.poll() is None


@dataclass
class Submitted:
    key: str
    kind: str  # "probe" or "swap"
    first_try: float  # wall clock, s
    task_id: str | None = None
    tries: int = 0
    refused: str | None = None  # a 4xx other than 429: the run's own failure


@dataclass
class Load:
    """The clients: open-loop creates, each retried with its key until answered."""

    gateways: list[str]
    webhook_url: str
    swap_input: dict[str, str]
    submitted: list[Submitted] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)

    def body(self, kind: str) -> dict[str, Any]:
        hook = {"webhook_url": self.webhook_url}
        if kind == "probe":
            return {**PROBE, **hook}
        return {
            "workflow": "face_swap",
            "environment": "face_swap",
            "params": {"input_data": {"wf_json": self.swap_input}},
            **hook,
        }

    async def submit(self, http: httpx.AsyncClient, item: Submitted) -> None:
        body = self.body(item.kind)
        gateway = hash(item.key) % len(self.gateways)
        while True:
            item.tries += 1
            url = f"{self.gateways[gateway]}/api/tasks/create"
            pause = 0.2
            try:
                answer = await http.post(url, json=body, headers={"Idempotency-Key": item.key})
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
                gateway = (gateway + 1) % len(self.gateways)  # that one may be down
            else:
                self.answers[str(answer.status_code)] += 1
                if answer.status_code in (200, 201):
                    item.task_id = answer.json()["taskId"]
                    return
                if answer.status_code < 500 and answer.status_code != 429:
                    item.refused = f"{answer.status_code} {answer.text[:200]}"
                    return
                pause = min(1.0, float(answer.headers.get("retry-after") or pause))
            await asyncio.sleep(pause)  # the client's pause before its retry

    async def run(self, duration_s: float, rate: float, swap_rate: float) -> None:
        """Creates at the given rates for ``duration_s``, then waits for every answer."""
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=10, limits=limits) as http:
            pending: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            sent = {"probe": 0, "swap": 0}
            while (now := time.monotonic() - started) < duration_s:
                for kind, per_s in (("probe", rate), ("swap", swap_rate)):
                    while sent[kind] < int(now * per_s) + 1 and per_s > 0:
                        sent[kind] += 1
                        item = Submitted(
                            f"chaos-{kind}-{sent[kind]}-{os.getpid()}", kind, time.time()
                        )
                        self.submitted.append(item)
                        job = asyncio.create_task(self.submit(http, item))
                        pending.add(job)
                        job.add_done_callback(pending.discard)
                await asyncio.sleep(0.01)  # the open loop's tick
            if pending:
                await asyncio.wait(pending, timeout=180)


@dataclass
class Report:
    figures: dict[str, Any]
    failures: list[str]


async def settle(nats_url: str, task_ids: list[str], timeout_s: float) -> dict[str, TaskState]:
    """Waits until every task's projected state is final (or the timeout); the states."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
    try:
        kv = await nc.jetstream().key_value(STATE_BUCKET)
        states: dict[str, TaskState] = {}
        waiting = list(task_ids)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            still: list[str] = []
            for task_id in waiting:
                try:
                    entry = await kv.get(task_id)
                except Exception:  # not projected yet (or NATS restarting)
                    still.append(task_id)
                    continue
                state = decode_state(entry.value or b"")
                states[task_id] = state
                if not state.is_final:
                    still.append(task_id)
            waiting = still
            if waiting:
                await asyncio.sleep(0.5)  # polling the projection of the last tasks
        return states
    finally:
        await nc.close()


async def unreadable_outputs(states: Mapping[str, TaskState]) -> list[str]:
    """Completed tasks whose outputs cannot be downloaded and decoded."""
    bad: list[str] = []
    gate = asyncio.Semaphore(16)

    async def check(http: httpx.AsyncClient, state: TaskState) -> None:
        async with gate:
            if not state.outputs:
                bad.append(f"{state.task_id}: no outputs")
            for output in state.outputs:
                try:
                    answer = await http.get(output.url)
                    answer.raise_for_status()
                    if state.workflow == "probe":
                        assert json.loads(answer.content)["task_id"] == state.task_id
                    else:
                        Image.open(io.BytesIO(answer.content)).load()
                except Exception as exc:
                    bad.append(f"{state.task_id}: {output.url}: {exc!r}")

    completed = [s for s in states.values() if s.status is TaskStatus.COMPLETED]
    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(check(http, state) for state in completed))
    return bad


async def wait_webhooks(receiver: Receiver, expected: set[str], timeout_s: float) -> set[str]:
    """The expected webhook ids not received within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = expected - {r.headers.get("webhook-id", "") for r in receiver.received}
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.2)  # polling the receiver for the last deliveries


async def examine(
    nats_url: str, load: Load, receiver: Receiver, supervisor: Supervisor, max_final_s: float
) -> Report:
    accepted = [s for s in load.submitted if s.task_id]
    task_ids = sorted({s.task_id for s in accepted if s.task_id})
    states = await settle(nats_url, task_ids, timeout_s=120)
    nc = await nats.connect(nats_url)
    try:
        events = await read_all_events(nc)
    finally:
        await nc.close()
    completions = {t: sum(isinstance(e, TaskCompleted) for e in events[t]) for t in task_ids}
    tasks_per_key: defaultdict[str, set[str]] = defaultdict(set)
    for task_events in events.values():
        for event in task_events:
            if isinstance(event, TaskCreated) and event.idempotency_key:
                tasks_per_key[event.idempotency_key].add(event.task_id)
    not_completed = {
        t: (states[t].status.value if t in states else "unknown")
        for t in task_ids
        if t not in states or states[t].status is not TaskStatus.COMPLETED
    }
    bad_outputs = await unreadable_outputs(states)
    expected_hooks = {
        f"{t}:completed" for t, s in states.items() if s.status is TaskStatus.COMPLETED
    }
    missing_hooks = await wait_webhooks(receiver, expected_hooks, timeout_s=60)
    ids = Counter(r.headers.get("webhook-id", "") for r in receiver.received)
    system_s = [
        (s.finished_at - s.created_at).total_seconds()
        for s in states.values()
        if s.finished_at and s.created_at
    ]
    first_try = {s.task_id: s.first_try for s in accepted}
    client_s = [
        s.finished_at.timestamp() - first_try[t]
        for t, s in states.items()
        if s.finished_at and t in first_try
    ]
    figures: dict[str, Any] = {
        "tasks created": len(task_ids),
        "face swaps": sum(1 for s in accepted if s.kind == "swap"),
        "kills": dict(supervisor.kills),
        "kills in all": sum(supervisor.kills.values()),
        "restarts": dict(supervisor.restarts),
        "client answers": dict(load.answers),
        "creates refused (4xx)": [s.refused for s in load.submitted if s.refused][:5],
        "creates never answered": sum(1 for s in load.submitted if not s.task_id and not s.refused),
        "tasks not COMPLETED": len(not_completed),
        "tasks with >1 TaskCompleted": sum(1 for n in completions.values() if n > 1),
        "keys with >1 task": sum(1 for t in tasks_per_key.values() if len(t) > 1),
        "outputs missing or unreadable": len(bad_outputs),
        "webhooks not delivered": len(missing_hooks),
        "webhooks repeated (same id, dropped by the receiver)": sum(
            n - 1 for n in ids.values() if n > 1
        ),
        "create -> final p50 s (system)": round(percentile(system_s, 0.5), 3) if system_s else None,
        "create -> final max s (system)": round(max(system_s), 3) if system_s else None,
        "first try -> final p50 s (client)": round(percentile(client_s, 0.5), 3)
        if client_s
        else None,
        "first try -> final max s (client)": round(max(client_s), 3) if client_s else None,
    }
    failures = [
        f"{name}: {figures[name]}"
        for name in (
            "creates never answered",
            "tasks not COMPLETED",
            "tasks with >1 TaskCompleted",
            "keys with >1 task",
            "outputs missing or unreadable",
            "webhooks not delivered",
        )
        if figures[name]
    ]
    if figures["creates refused (4xx)"]:
        failures.append(f"creates refused: {figures['creates refused (4xx)']}")
    slowest = figures["create -> final max s (system)"]
    if slowest is not None and slowest > max_final_s:
        failures.append(f"slowest task {slowest} s > {max_final_s} s")
    slowest_tasks = sorted(
        (s for s in states.values() if s.finished_at and s.created_at),
        key=lambda s: (s.finished_at - s.created_at) if s.finished_at and s.created_at else 0,
    )[-3:]
    figures["slowest (task, workflow, attempts, s)"] = [
        (
            s.task_id,
            s.workflow,
            s.attempts,
            round((s.finished_at - s.created_at).total_seconds(), 2),
        )
        for s in slowest_tasks
        if s.finished_at and s.created_at
    ]
    examples = list(not_completed.items())[:5] + [(b, "") for b in bad_outputs[:5]]
    if examples:
        figures["examples"] = examples
    return Report(figures, failures)


def service_env(nats_url: str, storage: Path, gateway_port: int, base_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": str(storage),
        "PIXELBUS_PUBLIC_BASE_URL": base_url,
        "PIXELBUS_PORT": str(gateway_port),
        "PIXELBUS_LOG_LEVEL": "WARNING",
        "PIXELBUS_SSRF_ALLOW_NETWORKS": "127.0.0.0/8",  # the local webhook receiver
        "PIXELBUS_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"chaos" * 7).decode(),
    }
    env.pop("PIXELBUS_PROBE_PORT", None)
    return env


def swap_input() -> dict[str, str]:
    def data_uri(path: Path, media_type: str) -> str:
        return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"

    return {
        "source_url": data_uri(package_file("skimage", "data", "astronaut.png"), "image/png"),
        "target_url": data_uri(
            package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
            "image/jpeg",
        ),
    }


async def wait_up(urls: list[str], timeout_s: float) -> None:
    """Every gateway answers its health check (the stack is starting)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        for url in urls:
            while True:
                try:
                    if (await http.get(f"{url}/api/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not healthy after {timeout_s:g} s")
                await asyncio.sleep(0.2)  # polling processes that are starting


async def chaos(args: argparse.Namespace, work: Path) -> Report:
    rng = random.Random(args.seed)
    nats_server = NatsServer(work / "nats")
    nats_server.start()
    ports = [free_port() for _ in range(ROLES["gateway"][1])]
    gateways = [f"http://127.0.0.1:{port}" for port in ports]
    members: list[Member] = []
    for role, (_, count) in ROLES.items():
        for index in range(count):
            port = ports[index] if role == "gateway" else ports[0]
            env = service_env(nats_server.url, work / "storage", port, gateways[0])
            members.append(Member(role, f"{role}-{index + 1}", env))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(nats_server, members, work / "logs")
    stop = asyncio.Event()
    watching = asyncio.create_task(supervisor.watch(stop))
    try:
        async with webhook_receiver() as receiver:
            await wait_up(gateways, 90)
            load = Load(gateways, receiver.url, swap_input())
            print(f"chaos: stack up; load and kills for {args.duration:g} s", flush=True)

            async def killer() -> None:
                for role in victims(rng, args.nats_every):
                    await asyncio.sleep(rng.uniform(*args.kill_every))  # the chaos schedule
                    supervisor.kill_one(role, rng)

            killing = asyncio.create_task(killer())
            try:
                await load.run(args.duration, args.rate, args.swap_rate)
            finally:
                killing.cancel()
            await wait_up(gateways, 60)
            return await examine(nats_server.url, load, receiver, supervisor, args.max_final_s)
    finally:
        stop.set()
        await watching
        supervisor.stop()


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120, help="seconds of load and kills")
    parser.add_argument("--rate", type=float, default=10, help="probe tasks per second")
    parser.add_argument("--swap-rate", type=float, default=0.5, help="face swaps per second")
    parser.add_argument(
        "--kill-every", type=parse_range, default=(1.0, 2.0), help="seconds between kills: LO-HI"
    )
    parser.add_argument(
        "--nats-every", type=int, default=15, help="every Nth kill is nats-server's (0: never)"
    )
    parser.add_argument("--max-final-s", type=float, default=10, help="goal: slowest task")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--work-dir", type=Path, default=None, help="kept; a temp dir if unset")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="pixelbus-chaos-") as tmp:
            report = asyncio.run(chaos(args, Path(tmp)))
    else:
        report = asyncio.run(chaos(args, args.work_dir))
    for name, value in report.figures.items():
        print(f"  {name:<55} {value}")
    if args.json:
        args.json.write_text(json.dumps(report.figures, indent=2, default=str))
    for failure in report.failures:
        print(f"chaos FAILED: {failure}", file=sys.stderr)
    print("chaos: " + ("FAILED" if report.failures else "passed"), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
