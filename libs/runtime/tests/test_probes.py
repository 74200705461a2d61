"""The probe server over real HTTP; the metrics; consumer lag read from a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from pixelbus.contracts.subjects import TASK_STREAM, UPLOADER_CONSUMER, task_subject
from pixelbus.runtime.metrics import Metrics, sample_consumers
from pixelbus.runtime.probes import (
    NotReady,
    ProbeServer,
    ProbeSettings,
    _is_loopback,
    request_drain,
)
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.service import consumer_ready
from pixelbus.runtime.settings import BusSettings
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import eventually

LOCAL = ProbeSettings(host="127.0.0.1", port=0, check_timeout_s=0.3)
SERVER_FIXTURES = frozenset({"probe"})  # a probe server: the test kit marks the tests `servers`


class Readiness:
    """A readiness check the test flips: ready, not ready (with a reason), or hanging."""

    def __init__(self) -> None:
        self.mode = "ready"
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        if self.mode == "not_ready":
            raise NotReady("consumer pool-faceswap not found")
        if self.mode == "false":
            return False
        if self.mode == "hang":
            await asyncio.Event().wait()
        return True


@pytest.fixture
async def probe() -> AsyncIterator[tuple[ProbeServer, Readiness, CollectorRegistry, list[str]]]:
    readiness = Readiness()
    registry = CollectorRegistry()
    drained: list[str] = []

    async def stop_worker() -> None:
        drained.append("async")

    server = ProbeServer(
        LOCAL,
        ready=readiness,
        registry=registry,
        on_drain=(lambda: drained.append("sync"), stop_worker),
    )
    await server.start()
    try:
        yield server, readiness, registry, drained
    finally:
        await server.stop()


def client(server: ProbeServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5)


async def test_healthz_and_readyz_answer_from_the_check(probe) -> None:
    server, readiness, _, _ = probe
    assert server.port != 0
    async with client(server) as http:
        health = await http.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        readiness.mode = "not_ready"
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert "consumer pool-faceswap not found" in not_ready.text
        readiness.mode = "false"
        assert (await http.get("/readyz")).status_code == 503
        # liveness never depends on the readiness check
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/readyz")).status_code == 405
    assert readiness.calls == 3


async def test_a_hanging_check_is_not_ready_within_the_check_timeout(probe) -> None:
    server, readiness, _, _ = probe
    readiness.mode = "hang"
    async with client(server) as http:
        answer = await http.get("/readyz")
    # the check was asked once and never answers: the 503 is the probe's own timeout
    assert readiness.calls == 1
    assert answer.status_code == 503
    assert "longer than 0.3s" in answer.text


async def test_metrics_show_the_counters_moving(probe) -> None:
    server, _, registry, _ = probe
    metrics = Metrics(registry)
    async with client(server) as http:
        before = await http.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert 'pixelbus_tasks_created_total{environment="face_swap"' not in before.text
        metrics.task_created("face_swap", "face_swap")
        metrics.task_created("face_swap", "face_swap")
        metrics.task_completed("face_swap")
        metrics.task_failed("face_swap", "no_face", final=True)
        metrics.observe_duration("face_swap", "handler", 0.2)
        metrics.observe_queue_wait("face_swap", 0.01)
        metrics.set_in_flight("faceswap", 3)
        metrics.set_backend_up("http://comfy-0:8188", True)
        metrics.uploaded("r2", 1234)
        metrics.upload_failed("r2", "throttled")
        text = (await http.get("/metrics")).text
    assert 'pixelbus_tasks_created_total{environment="face_swap",workflow="face_swap"} 2.0' in text
    assert 'pixelbus_tasks_completed_total{workflow="face_swap"} 1.0' in text
    assert (
        'pixelbus_tasks_failed_total{code="no_face",final="true",workflow="face_swap"} 1.0' in text
    )
    assert 'pixelbus_task_duration_seconds_count{step="handler",workflow="face_swap"} 1.0' in text
    assert 'pixelbus_task_queue_wait_seconds_count{workflow="face_swap"} 1.0' in text
    assert 'pixelbus_tasks_in_flight{pool="faceswap"} 3.0' in text
    assert 'pixelbus_comfyui_backend_up{backend="http://comfy-0:8188"} 1.0' in text
    assert 'pixelbus_upload_bytes_total{provider="r2"} 1234.0' in text
    assert 'pixelbus_upload_errors_total{code="throttled",provider="r2"} 1.0' in text


async def test_drain_from_loopback_turns_readiness_off_and_stops_work(probe) -> None:
    server, _, _, drained = probe
    status = await asyncio.to_thread(request_drain, server.port)
    assert status == 200
    assert server.draining
    assert drained == ["sync", "async"]
    async with client(server) as http:
        answer = await http.get("/readyz")
        assert (answer.status_code, answer.text) == (503, "draining\n")
        assert (await http.get("/healthz")).status_code == 200  # draining is not dead
        assert (await http.get("/drain")).status_code == 200
    assert drained == ["sync", "async"]  # callbacks run once


def test_drain_is_refused_from_other_addresses() -> None:
    assert _is_loopback(("127.0.0.1", 5000))
    assert _is_loopback(("::1", 5000, 0, 0))
    assert not _is_loopback(("10.1.2.3", 5000))
    assert not _is_loopback(("fe80::1%eth0", 5000, 0, 2))
    assert not _is_loopback(None)


@pytest.mark.servers  # a probe server of its own
async def test_a_blocked_event_loop_fails_liveness() -> None:
    server = ProbeServer(ProbeSettings(host="127.0.0.1", port=0, max_loop_lag_s=0.2), tick_s=0.02)
    await server.start()
    try:
        async with client(server) as http:
            assert (await http.get("/healthz")).status_code == 200
            time.sleep(0.5)  # noqa: ASYNC251 — the fault under test: a blocked event loop
            await eventually(lambda: _stalled(http), timeout=5)
            answer = await http.get("/healthz")
        assert answer.status_code == 503
        assert "event loop stalled" in answer.text
    finally:
        await server.stop()


async def _stalled(http: httpx.AsyncClient) -> bool | None:
    return True if (await http.get("/healthz")).status_code == 503 else None


def test_probe_settings_from_env() -> None:
    settings = ProbeSettings.from_env({"PIXELBUS_PROBE_PORT": "9191"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9191)
    assert ProbeSettings.from_env({}).port == 9090


async def test_consumer_lag_is_sampled_from_jetstream(nc: Client) -> None:
    js = nc.jetstream()
    await ensure(js, BusSettings())
    for index in range(5):
        await js.publish(
            task_subject("face_swap", "probe", "created", f"t{index}"), b"{}", stream=TASK_STREAM
        )
    await js.publish(task_subject("comm", "wf", "outputs", "t9"), b"{}", stream=TASK_STREAM)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    await sample_consumers(js, metrics)

    def value(consumer: str) -> float | None:
        return registry.get_sample_value(
            "pixelbus_consumer_pending", {"stream": TASK_STREAM, "consumer": consumer}
        )

    assert value("pool-faceswap") == 5
    assert value("pool-comfy") == 0
    assert value(UPLOADER_CONSUMER) == 1
    # a consumer that does not exist is skipped, the others still sampled
    await sample_consumers(js, metrics, [(TASK_STREAM, "missing"), (TASK_STREAM, "pool-comfy")])
    assert value("missing") is None


async def test_consumer_ready_follows_the_consumer_and_the_connection(
    nats_server: NatsServer,
) -> None:
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    client = await nats.connect(
        nats_server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        disconnected_cb=on_disconnect,
    )
    try:
        check = consumer_ready(client, TASK_STREAM, "pool-faceswap")
        with pytest.raises(NotReady, match="pool-faceswap"):
            await check()
        await ensure(client.jetstream(), BusSettings())
        assert await check() is True
        nats_server.stop()
        await asyncio.wait_for(disconnected.wait(), 10)
        with pytest.raises(NotReady, match="not connected"):
            await check()
    finally:
        await client.close()
