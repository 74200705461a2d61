"""``just bench``: probe tasks through the whole system vs. a bare JetStream round trip.

Starts its own nats-server and the services as processes (gateway with projector,
face-swap worker serving ``probe``, uploader with local storage), then measures:

- throughput at saturation: N probe tasks created over HTTP by C concurrent clients,
  until the KV says COMPLETED for all;
- latency p50/p99 at a light fixed rate (HTTP create → KV COMPLETED);
- the reference, on the same nats-server: publish → pull → ack → reply, bare JetStream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.runtime.state import decode_state
from pixelbus.testkit.nats_server import NatsServer, free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Completions:
    """Watches the whole state bucket; resolves a future per task when it is final."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
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


async def bench_system(
    base: str, nats_url: str, total: int, clients: int, rate: float, seconds: float
) -> dict[str, float]:
    nc = await nats.connect(nats_url)
    kv = await nc.jetstream().key_value(STATE_BUCKET)
    completions = Completions()
    watcher = asyncio.create_task(completions.watch(kv))
    body = {"workflow": "probe", "environment": "face_swap"}
    # aiohttp, not httpx: at saturation httpx's pool took most of a core in this process.
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector) as http:

        async def create() -> str:
            async with http.post("/api/tasks/create", json=body) as response:
                assert response.status < 300, await response.text()
                return str((await response.json())["taskId"])

        # warm-up
        for _ in range(20):
            await asyncio.wait_for(completions.wait(await create()), 30)
        # saturation
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        ids: list[str] = []

        async def client() -> None:
            while not queue.empty():
                queue.get_nowait()
                ids.append(await create())

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        ends = await asyncio.wait_for(asyncio.gather(*(completions.wait(t) for t in ids)), 300)
        throughput = total / (max(ends) - start)
        # light fixed rate
        latencies: list[float] = []

        async def one() -> None:
            t0 = time.perf_counter()
            task_id = await create()
            latencies.append(await asyncio.wait_for(completions.wait(task_id), 60) - t0)

        pending = []
        count = int(rate * seconds)
        t_start = time.perf_counter()
        for i in range(count):
            delay = t_start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one()))
        await asyncio.gather(*pending)
    watcher.cancel()
    await nc.close()
    return {
        "throughput": throughput,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def bench_reference(nats_url: str, total: int, one_in_flight: int) -> dict[str, float]:
    """Bare JetStream: publish → pull → ack → reply (the floor under any task system)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCH_REF", subjects=["bench.ref.>"]))
    await js.add_consumer(
        "BENCH_REF",
        ConsumerConfig(durable_name="ref", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000),
    )
    sub = await js.pull_subscribe_bind(durable="ref", stream="BENCH_REF")
    waiters: dict[str, asyncio.Future[None]] = {}

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        waiter = waiters.pop(msg.data.decode(), None)
        if waiter is not None:
            waiter.set_result(None)

    await nc.subscribe("bench.done", cb=on_reply)
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                await msg.ack()
                await nc.publish("bench.done", msg.data)

    runner = asyncio.create_task(worker())

    async def round_trip(i: int) -> None:
        key = str(i)
        waiters[key] = asyncio.get_running_loop().create_future()
        future = waiters[key]
        await js.publish(f"bench.ref.{i}", key.encode())
        await future

    latencies = []
    for i in range(one_in_flight):
        t0 = time.perf_counter()
        await round_trip(i)
        latencies.append(time.perf_counter() - t0)
    semaphore = asyncio.Semaphore(256)

    async def bounded(i: int) -> None:
        async with semaphore:
            await round_trip(i)

    start = time.perf_counter()
    await asyncio.gather(*(bounded(one_in_flight + i) for i in range(total)))
    throughput = total / (time.perf_counter() - start)
    stop.set()
    await runner
    await nc.close()
    return {
        "throughput": throughput,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        port = free_port()
        env = {
            **os.environ,
            "NATS_URL": server.url,
            "PIXELBUS_PORT": str(port),
            "STORAGE_PROVIDER": "local",
            "PIXELBUS_LOCAL_STORAGE_DIR": str(Path(tmp) / "storage"),
            "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "PIXELBUS_WORKER_CONCURRENCY": "128",
            "PIXELBUS_LOG_LEVEL": "WARNING",
        }
        modules = ["pixelbus.gateway", "pixelbus.faceswap_worker", "pixelbus.storage_uploader"]
        processes = [subprocess.Popen([sys.executable, "-m", m], env=env) for m in modules]
        base = f"http://127.0.0.1:{port}"
        try:
            wait_health(base, processes[0])
            system = asyncio.run(
                bench_system(base, server.url, args.tasks, args.clients, args.rate, args.seconds)
            )
            reference = asyncio.run(bench_reference(server.url, args.tasks * 5, 500))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(20)
            server.stop()
    print(
        f"pixelbus probe tasks (HTTP create -> worker -> uploader -> KV COMPLETED), {args.tasks} tasks, {args.clients} clients"
    )
    print(f"  throughput at saturation: {system['throughput']:8.0f} tasks/s")
    print(
        f"  latency at {args.rate:g} tasks/s:   p50 {system['p50_ms']:6.2f} ms   p99 {system['p99_ms']:6.2f} ms"
    )
    print("reference: bare JetStream publish -> pull -> ack -> reply, same nats-server")
    print(f"  throughput at saturation: {reference['throughput']:8.0f} round trips/s")
    print(
        f"  latency one in flight:    p50 {reference['p50_ms']:6.2f} ms   p99 {reference['p99_ms']:6.2f} ms"
    )
    print(
        f"ratio pixelbus / reference: throughput {system['throughput'] / reference['throughput']:.2f}x, "
        f"p50 latency {system['p50_ms'] / reference['p50_ms']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
