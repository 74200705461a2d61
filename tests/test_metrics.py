"""``/metrics`` on every service moves with the tasks; ``/readyz`` answers for real."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack, running_stack, spawn_service

pytestmark = pytest.mark.e2e

PROBE = {"workflow": "probe", "environment": "face_swap"}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text page (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_gateway_metrics_count_created_completed_and_end_to_end(stack: Stack) -> None:
    before = (await stack.http.get("/metrics")).text
    task_id = (await stack.http.post("/api/tasks/create", json=PROBE)).json()["taskId"]
    await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final)

    async def moved() -> str | None:
        text = (await stack.http.get("/metrics")).text
        done = sample(
            text, "pixelbus_task_duration_seconds_count", workflow="probe", step="end_to_end"
        )
        return (
            text
            if done
            > sample(
                before, "pixelbus_task_duration_seconds_count", workflow="probe", step="end_to_end"
            )
            else None
        )

    after = await eventually(moved)
    created = ("pixelbus_tasks_created_total", {"workflow": "probe", "environment": "face_swap"})
    assert sample(after, created[0], **created[1]) == sample(before, created[0], **created[1]) + 1
    completed = ("pixelbus_tasks_completed_total", {"workflow": "probe"})
    assert (
        sample(after, completed[0], **completed[1])
        == sample(before, completed[0], **completed[1]) + 1
    )
    # The consumer lag gauges exist (sampled every few seconds by the gateway).
    assert "pixelbus_consumer_pending" in after


async def test_worker_and_uploader_processes_serve_probes_and_metrics(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    worker_port, uploader_port = free_port(), free_port()
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        worker = spawn_service(
            "pixelbus.faceswap_worker", {**stack.env, "PIXELBUS_PROBE_PORT": str(worker_port)}
        )
        uploader = spawn_service(
            "pixelbus.storage_uploader", {**stack.env, "PIXELBUS_PROBE_PORT": str(uploader_port)}
        )
        try:
            async with httpx.AsyncClient(timeout=5) as http:

                async def ready(port: int) -> bool | None:
                    try:
                        response = await http.get(f"http://127.0.0.1:{port}/readyz")
                    except httpx.TransportError:
                        return None
                    return True if response.status_code == 200 else None

                await eventually(lambda: ready(worker_port), timeout=60)
                await eventually(lambda: ready(uploader_port), timeout=30)
                task_id = (await stack.http.post("/api/tasks/create", json=PROBE)).json()["taskId"]
                await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
                worker_text = (await http.get(f"http://127.0.0.1:{worker_port}/metrics")).text
                uploader_text = (await http.get(f"http://127.0.0.1:{uploader_port}/metrics")).text
                healthy = await http.get(f"http://127.0.0.1:{worker_port}/healthz")
        finally:
            for process in (worker, uploader):
                process.send_signal(signal.SIGTERM)
            for process in (worker, uploader):
                await asyncio.to_thread(process.wait, 20)
    assert healthy.status_code == 200
    assert (
        sample(
            worker_text, "pixelbus_task_duration_seconds_count", workflow="probe", step="handler"
        )
        == 1
    )
    assert sample(worker_text, "pixelbus_task_queue_wait_seconds_count", workflow="probe") == 1
    assert sample(uploader_text, "pixelbus_tasks_completed_total", workflow="probe") == 1
    assert (
        sample(
            uploader_text, "pixelbus_task_duration_seconds_count", workflow="probe", step="upload"
        )
        == 1
    )
    assert sample(uploader_text, "pixelbus_upload_bytes_total", provider="local") > 0
    assert worker.returncode == 0 and uploader.returncode == 0


async def test_gateway_process_serves_probes_in_the_shared_shell_and_keeps_serving_while_draining(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``python -m pixelbus.gateway`` as deployed: the probe server comes from the shared
    process shell; a drain (preStop) turns readiness off but the API keeps answering until
    SIGTERM (Kubernetes takes the pod out of the endpoints meanwhile); SIGTERM: exit 0."""
    probe_port, api_port = free_port(), free_port()
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        gateway = spawn_service(
            "pixelbus.gateway",
            {**stack.env, "PIXELBUS_PORT": str(api_port), "PIXELBUS_PROBE_PORT": str(probe_port)},
        )
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{probe_port}", timeout=5) as probes,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as api,
            ):

                async def ready() -> bool | None:
                    with contextlib.suppress(httpx.TransportError):
                        return True if (await probes.get("/readyz")).status_code == 200 else None
                    return None

                await eventually(ready, timeout=30)
                assert (await probes.get("/healthz")).status_code == 200
                assert (await api.post("/api/tasks/create", json=PROBE)).status_code == 201
                text = (await probes.get("/metrics")).text
                assert sample(text, "pixelbus_tasks_created_total", workflow="probe") == 1
                # preStop drains from inside the pod (loopback): readiness off for good ...
                assert (await probes.get("/drain")).status_code == 200
                assert (await probes.get("/readyz")).status_code == 503
                # ... while requests still routed to the pod are answered
                assert (await api.post("/api/tasks/create", json=PROBE)).status_code == 201
        finally:
            gateway.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gateway.wait, 20)
    assert code == 0
