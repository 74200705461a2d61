"""The load generator of ``just bench``: one system, the same phases for all, one JSON line.

Run by ``tests/bench.py`` as a process of its own, apart from every process of the system
under test, with the interpreter that has the system's client library (arq's lives in a
virtualenv of its own). So this file imports only the standard library at the top; each
adapter imports its client library when it starts.

    python tests/bench_loadgen.py --system celery --param redis_url=redis://127.0.0.1:PORT/0

An adapter does two things, the way a user of that system's client would: ``submit`` one
no-op task (returns once the system accepted it) and ``complete`` it (returns the
``perf_counter`` time at which the client learned that the task completed). The phases, in
this order, each over the same adapter:

1. warm-up (not measured): ``--warmup`` tasks, as in the saturation phase;
2. one in flight: ``--one`` sequential tasks; latency = submit → completion learned;
3. (pixelbus only, secondary) ``--kv-one`` sequential tasks, each timed twice: completion
   seen on its subject, and ``COMPLETED`` seen through a watch of the task-state KV bucket
   (what API clients see);
4. fixed rate, open loop: ``--rate`` tasks/s for ``--seconds`` s, each sent on schedule
   whether or not the earlier ones completed; latency from the actual send (an asyncio sleep
   overshoots by up to a millisecond, which would otherwise be charged to the system); the
   worst lag of a send behind its schedule is reported;
5. saturation: ``--tasks`` tasks by ``--clients`` concurrent clients, each submitting its
   share back to back and then waiting for its tasks' completions in order (a batch, as a
   user of each client library writes it: ``[noop.delay() ...]`` then ``.get()`` each);
   tasks/s = completed / (last completion learned - first submit). Accepted and completed
   are counted apart: a task refused, or accepted and not completed within ``--timeout`` s,
   is an error, reported with samples.

The adapters (what "accepted" and "completed" mean for each system):

- ``pixelbus``: ``POST /api/tasks/create`` (probe workflow) answered 201 with ``taskId``
  (aiohttp: httpx's pool burned a core at saturation); completion = ``TaskCompleted`` on a
  core NATS subscription to ``pixelbus.tasks.*.*.completed.*``, made before the first send.
- ``celery``: ``noop.delay()`` returned (the message is in Redis); completion = ``.get()``
  returned (Redis result backend: pub/sub, Celery's default one connection per thread).
  Celery's client blocks, so each client (each sequential caller) gets a thread of its own
  for as long as it has tasks outstanding, and calls ``delay`` and ``get`` there; the event
  loop only hands the calls over.
- ``arq``: ``enqueue_job("noop")`` returned a job; completion = ``job.result(poll_delay=
  0.005)`` returned (arq's client polls the result key: 5 ms, the tuned setting).
- ``jetstream``: the bare reference: a JetStream publish acknowledged (stored); completion
  = the reference worker's reply on ``bench.done`` (core subscription).

Every system gets the same event loop (the standard asyncio one) in this process. Time
limits use ``asyncio.timeout`` (not ``wait_for``, which runs the call in another task: the
Celery adapter binds its threads to the calling task).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ADAPTERS", "Refused", "Rendezvous", "add_phase_arguments", "percentile", "summarize"]

PROBE_BODY = {"workflow": "probe", "environment": "face_swap"}
COMPLETED_SUBJECTS = "pixelbus.tasks.*.*.completed.*"
STATE_BUCKET = "PIXELBUS_TASK_STATE"
TASK_STREAM = "PIXELBUS_TASKS"
#: one-in-flight hops, from the client's send and the stream's own store times
HOPS = (
    ("http_to_created", None, "created"),
    ("created_to_outputs", "created", "outputs"),
    ("outputs_to_completed", "outputs", "completed"),
)
ERROR_SAMPLES = 5
HERE = os.path.dirname(os.path.abspath(__file__))


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q ≤ 1) of ``values``: a value that occurred."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 1:
        raise ValueError(f"quantile {q} is not in (0, 1]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(latencies_s: list[float], errors: list[str], requested: int) -> dict[str, Any]:
    """Latencies in ms (p50, p99, mean, max) with the count of errors and a few samples."""
    out: dict[str, Any] = {"requested": requested, "ok": len(latencies_s), "errors": len(errors)}
    if errors:
        out["error_samples"] = sorted(set(errors))[:ERROR_SAMPLES]
    if latencies_s:
        out |= {
            "p50_ms": percentile(latencies_s, 0.5) * 1000,
            "p99_ms": percentile(latencies_s, 0.99) * 1000,
            "mean_ms": sum(latencies_s) / len(latencies_s) * 1000,
            "max_ms": max(latencies_s) * 1000,
        }
    return out


class Refused(Exception):
    """The system did not accept a task (an error answer, a failed publish)."""


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


class Rendezvous:
    """Completion times by key, whichever comes first: the completion or the waiter.

    A completion may overtake the answer that names its task (HTTP 201 after the task
    already ran); it is kept until someone waits for that key.
    """

    def __init__(self) -> None:
        self._early: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}

    def arrive(self, key: str, at: float) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            self._early.setdefault(key, at)
        elif not waiter.done():  # else given up on (timed out) meanwhile
            waiter.set_result(at)

    def wait(self, key: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self._early:
            future.set_result(self._early.pop(key))
        else:
            self._waiters[key] = future
        return future

    def forget(self, key: str) -> None:
        self._waiters.pop(key, None)


class Adapter:
    """Submit one no-op task; learn of its completion. See the module docstring."""

    def __init__(self, params: dict[str, str], clients: int, timeout_s: float) -> None:
        self.params = params
        self.clients = clients
        self.timeout_s = timeout_s

    async def start(self) -> None:
        raise NotImplementedError

    async def submit(self) -> Any:
        """Returns once the system accepted one task: a handle for ``complete``."""
        raise NotImplementedError

    async def complete(self, handle: Any) -> float:
        """Waits for the task's completion; the ``perf_counter`` time it was learned."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PixelbusAdapter(Adapter):
    async def start(self) -> None:
        import aiohttp
        import nats

        self._nc = await nats.connect(self.params["nats_url"])
        self._done = Rendezvous()

        async def on_completed(msg: Any) -> None:
            self._done.arrive(msg.subject.rsplit(".", 1)[-1], time.perf_counter())

        await self._nc.subscribe(COMPLETED_SUBJECTS, cb=on_completed)
        await self._nc.flush()
        connector = aiohttp.TCPConnector(limit=self.clients + 4)
        self._http = aiohttp.ClientSession(self.params["base_url"], connector=connector)

    async def create(self) -> str:
        async with self._http.post("/api/tasks/create", json=PROBE_BODY) as response:
            if response.status != 201:
                raise Refused(f"HTTP {response.status}: {(await response.text())[:120]}")
            return str((await response.json())["taskId"])

    async def submit(self) -> asyncio.Future[float]:
        return self._done.wait(await self.create())

    async def complete(self, handle: asyncio.Future[float]) -> float:
        return await handle

    async def kv_one(self, count: int) -> dict[str, Any]:
        """Sequential tasks timed to the subject and to ``COMPLETED`` in a KV watch."""
        import nats.errors

        kv = await self._nc.jetstream().key_value(STATE_BUCKET)
        kv_done = Rendezvous()
        watcher = await kv.watchall()

        async def follow() -> None:
            while True:
                try:
                    entry = await watcher.updates(timeout=3600)
                except nats.errors.TimeoutError:  # nothing changed for an hour
                    continue
                if entry is None or not entry.value:
                    continue
                state = json.loads(entry.value)
                if state.get("status") == "COMPLETED":
                    kv_done.arrive(str(state.get("task_id", entry.key)), time.perf_counter())

        follower = asyncio.create_task(follow())
        subject_s: list[float] = []
        kv_s: list[float] = []
        errors: list[str] = []
        sent_at: dict[str, float] = {}  # task id -> wall-clock time of its POST
        try:
            for _ in range(count):
                started, wall = time.perf_counter(), time.time()
                try:
                    task_id = await asyncio.wait_for(self.create(), self.timeout_s)
                    seen = await asyncio.wait_for(
                        asyncio.gather(self._done.wait(task_id), kv_done.wait(task_id)),
                        self.timeout_s,
                    )
                except Exception as exc:
                    errors.append(describe(exc))
                    continue
                subject_s.append(seen[0] - started)
                kv_s.append(seen[1] - started)
                sent_at[task_id] = wall
        finally:
            follower.cancel()
            await watcher.stop()
        return {
            "subject": summarize(subject_s, errors, count),
            "kv": summarize(kv_s, [], count),
            "hops": await self._hops(sent_at),
        }

    async def _hops(self, sent_at: dict[str, float]) -> dict[str, Any]:
        """Per-hop medians (ms) of sequential tasks, from the stream's store times of
        their events (the server's clock; the POST's from this machine's, the same)."""
        from datetime import datetime

        js = self._nc.jetstream()
        hops: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
        for task_id, sent in sent_at.items():
            stored: dict[str | None, float] = {None: sent}
            for kind in ("created", "outputs", "completed"):
                subject = f"pixelbus.tasks.face_swap.probe.{kind}.{task_id}"
                msg = await js.get_last_msg(TASK_STREAM, subject)
                when = msg.time
                if isinstance(when, str):
                    when = datetime.fromisoformat(when)
                stored[kind] = when.timestamp()
            for name, start, end in HOPS:
                hops[name].append(stored[end] - stored[start])
        return {name: percentile(v, 0.5) * 1000 for name, v in hops.items() if v}

    async def close(self) -> None:
        await self._http.close()
        await self._nc.close()


class CeleryAdapter(Adapter):
    """Celery's blocking client, one thread per caller while it has tasks outstanding.

    ``delay`` and the ``get`` of the same task run in the same thread: Celery's result
    backend is per thread, and the thread that sent a task is the one subscribed to its
    result.
    """

    async def start(self) -> None:
        sys.path.insert(0, HERE)
        import bench_celery_app  # the no-op task and the app's settings, shared with the worker

        app = bench_celery_app.make_app(self.params["redis_url"], client_threads=self.clients)
        self._task = app.tasks[bench_celery_app.NOOP]
        self._idle: list[concurrent.futures.ThreadPoolExecutor] = []
        self._all: list[concurrent.futures.ThreadPoolExecutor] = []
        # caller (asyncio task) -> its thread and how many of its tasks are outstanding
        self._bound: dict[asyncio.Task[Any], tuple[concurrent.futures.ThreadPoolExecutor, int]]
        self._bound = {}

    def _bind(self) -> concurrent.futures.ThreadPoolExecutor:
        caller = asyncio.current_task()
        assert caller is not None
        thread, outstanding = self._bound.get(caller, (None, 0))
        if thread is None:
            if self._idle:
                thread = self._idle.pop()
            else:
                thread = concurrent.futures.ThreadPoolExecutor(1, "celery-client")
                self._all.append(thread)
        self._bound[caller] = (thread, outstanding + 1)
        return thread

    def _release(self, caller: asyncio.Task[Any]) -> None:
        thread, outstanding = self._bound[caller]
        if outstanding > 1:
            self._bound[caller] = (thread, outstanding - 1)
        else:
            del self._bound[caller]
            self._idle.append(thread)

    async def submit(self) -> tuple[asyncio.Task[Any], Any]:
        thread = self._bind()
        caller = asyncio.current_task()
        assert caller is not None
        try:
            result = await asyncio.get_running_loop().run_in_executor(thread, self._task.delay)
        except Exception as exc:
            self._release(caller)
            raise Refused(describe(exc)) from exc
        return caller, result

    async def complete(self, handle: tuple[asyncio.Task[Any], Any]) -> float:
        caller, result = handle
        thread, _ = self._bound[caller]
        timeout_s = self.timeout_s

        def get() -> float:
            result.get(timeout=timeout_s)
            return time.perf_counter()

        try:
            return await asyncio.get_running_loop().run_in_executor(thread, get)
        finally:
            self._release(caller)

    async def close(self) -> None:
        for thread in self._all:
            thread.shutdown(wait=False, cancel_futures=True)


class ArqAdapter(Adapter):
    async def start(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self._redis = await create_pool(
            RedisSettings(host=self.params["redis_host"], port=int(self.params["redis_port"]))
        )

    async def submit(self) -> Any:
        job = await self._redis.enqueue_job("noop")
        if job is None:
            raise Refused("enqueue_job returned no job (duplicate id)")
        return job

    async def complete(self, handle: Any) -> float:
        await handle.result(timeout=self.timeout_s, poll_delay=0.005)
        return time.perf_counter()

    async def close(self) -> None:
        await self._redis.aclose()


class JetStreamAdapter(Adapter):
    async def start(self) -> None:
        import nats

        self._nc = await nats.connect(self.params["nats_url"])
        self._js = self._nc.jetstream()
        self._done = Rendezvous()
        self._ids = itertools.count()

        async def on_done(msg: Any) -> None:
            self._done.arrive(msg.data.decode(), time.perf_counter())

        await self._nc.subscribe("bench.done", cb=on_done)
        await self._nc.flush()

    async def submit(self) -> asyncio.Future[float]:
        key = str(next(self._ids))
        done = self._done.wait(key)
        try:
            await self._js.publish(f"bench.ref.{key}", key.encode())
        except Exception as exc:
            self._done.forget(key)
            raise Refused(describe(exc)) from exc
        return done

    async def complete(self, handle: asyncio.Future[float]) -> float:
        return await handle

    async def close(self) -> None:
        await self._nc.close()


ADAPTERS: dict[str, type[Adapter]] = {
    "pixelbus": PixelbusAdapter,
    "celery": CeleryAdapter,
    "arq": ArqAdapter,
    "jetstream": JetStreamAdapter,
}


async def _round_trip(adapter: Adapter, timeout_s: float) -> float:
    """Latency (s) of one task: submit, then wait for its completion; raises on failure."""
    sent = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        handle = await adapter.submit()
    async with asyncio.timeout(timeout_s):
        return await adapter.complete(handle) - sent


async def one_in_flight(adapter: Adapter, count: int, timeout_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    for _ in range(count):
        try:
            latencies.append(await _round_trip(adapter, timeout_s))
        except Exception as exc:
            errors.append(describe(exc))
    return summarize(latencies, errors, count)


async def fixed_rate(
    adapter: Adapter, rate: float, seconds: float, timeout_s: float
) -> dict[str, Any]:
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        try:
            latencies.append(await _round_trip(adapter, timeout_s))
        except Exception as exc:
            errors.append(describe(exc))

    running: list[asyncio.Task[None]] = []
    worst_lag = 0.0
    start = time.perf_counter() + 0.005
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, time.perf_counter() - scheduled)
        running.append(asyncio.create_task(one()))
    sent_for = time.perf_counter() - start
    await asyncio.gather(*running)
    out = summarize(latencies, errors, count)
    out |= {
        "rate": rate,
        "achieved_rate": (count - 1) / sent_for if count > 1 and sent_for > 0 else None,
        "worst_send_lag_ms": worst_lag * 1000,
    }
    return out


async def saturation(
    adapter: Adapter, total: int, clients: int, timeout_s: float
) -> dict[str, Any]:
    clients = max(1, min(clients, total))
    shares = [total // clients + (1 if k < total % clients else 0) for k in range(clients)]
    accepted = completed = 0
    errors: list[str] = []
    last_completion = 0.0

    async def client(share: int) -> None:
        nonlocal accepted, completed, last_completion
        handles = []
        for _ in range(share):
            try:
                async with asyncio.timeout(timeout_s):
                    handles.append(await adapter.submit())
            except Exception as exc:
                errors.append(f"refused: {describe(exc)}")
        accepted += len(handles)
        for handle in handles:
            try:
                async with asyncio.timeout(timeout_s):
                    at = await adapter.complete(handle)
            except Exception as exc:
                errors.append(f"accepted, not completed: {describe(exc)}")
                continue
            completed += 1
            last_completion = max(last_completion, at)

    start = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares))
    elapsed = last_completion - start if completed else None
    out: dict[str, Any] = {
        "tasks": total,
        "clients": clients,
        "accepted": accepted,
        "completed": completed,
        "errors": len(errors),
        "seconds": elapsed,
        "tasks_per_s": completed / elapsed if elapsed else None,
    }
    if errors:
        out["error_samples"] = sorted(set(errors))[:ERROR_SAMPLES]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    params = dict(item.split("=", 1) for item in args.param)
    adapter = ADAPTERS[args.system](params, args.clients, args.timeout)
    results: dict[str, Any] = {"system": args.system}

    async def phase(name: str, body: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        began = time.perf_counter()
        results[name] = await body()
        took = time.perf_counter() - began
        print(f"  {args.system}: {name} done in {took:.1f} s", file=sys.stderr, flush=True)

    await adapter.start()
    try:
        if args.warmup:
            await phase("warmup", lambda: saturation(adapter, args.warmup, args.clients, 60))
        if args.one:
            await phase("one", lambda: one_in_flight(adapter, args.one, args.timeout))
        if args.kv_one and isinstance(adapter, PixelbusAdapter):
            await phase("kv_one", lambda: adapter.kv_one(args.kv_one))
        if args.rate and args.seconds:
            await phase("rate", lambda: fixed_rate(adapter, args.rate, args.seconds, args.timeout))
        if args.tasks:
            await phase(
                "saturation", lambda: saturation(adapter, args.tasks, args.clients, args.timeout)
            )
    finally:
        await adapter.close()
    return results


def add_phase_arguments(
    parser: argparse.ArgumentParser, *, tasks: int = 2000, kv_one: int = 0
) -> None:
    """The knobs of the phases, shared by this generator and ``tests/bench.py``."""
    parser.add_argument("--warmup", type=int, default=100, help="warm-up tasks (not measured)")
    parser.add_argument("--one", type=int, default=200, help="one-in-flight tasks")
    parser.add_argument("--kv-one", type=int, default=kv_one, help="pixelbus: one in flight via KV")
    parser.add_argument("--rate", type=float, default=100, help="fixed open-loop rate, tasks/s")
    parser.add_argument("--seconds", type=float, default=3, help="how long the fixed rate runs")
    parser.add_argument("--tasks", type=int, default=tasks, help="saturation: tasks in all")
    parser.add_argument("--clients", type=int, default=64, help="saturation: concurrent clients")
    parser.add_argument("--timeout", type=float, default=30, help="per task, seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--param", action="append", default=[], help="adapter setting KEY=VALUE")
    add_phase_arguments(parser)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
