"""The NATS users of deploy/k8s/nats/values.yaml, on a real nats-server.

The accounts, users and permissions are taken from the Helm values as they are (the
``config.merge`` block, ``<< $VAR >>`` passwords resolved from the environment as the
chart does) and served by a real nats-server. Each service then starts with its own user,
exactly as in a cluster: it runs its ``ensure`` and its loop; probe tasks of both pools,
a face swap and a task with a webhook go through the gateway, the projector (the only
writer of the task state, which also plans the webhook), the workers, the uploader and
the webhooks service with no permission violation, and the operator's rebuild runs with
the projector's user. Then each user tries what it must not do (the gateway writing the
task state or queueing a webhook, the uploader creating a task, a worker writing the task
state or completing a task, the webhooks service publishing a task event, deleting the
stream) and is refused, and nothing of it lands.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn
import yaml
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from pixelbus.contracts.subjects import (
    STATE_BUCKET,
    TASK_STREAM,
    WEBHOOK_LOG_BUCKET,
    WEBHOOK_STREAM,
    pool_for_environment,
    task_subject,
    webhook_subject,
)
from pixelbus.gateway.app import create_app
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.projector.rebuild import rebuild
from pixelbus.projector.service import ProjectorService
from pixelbus.projector.settings import ProjectorSettings
from pixelbus.runtime.provision import ensure, ensure_webhooks
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.runtime.worker import WorkerRuntime
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import StorageSettings
from pixelbus.storage_uploader.uploader import Uploader
from pixelbus.testkit.nats_server import find_nats_server, free_port
from pixelbus.testkit.waiting import eventually, wait_for_state
from pixelbus.webhooks.service import WebhookService
from pixelbus.webhooks.settings import WebhookSettings
from tests.conftest import data_uri
from tests.stack import stack_env, start_worker
from tests.webhook_receiver import Receiver, webhook_receiver

VALUES = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "nats" / "values.yaml"
USERS = (
    "gateway",
    "projector",
    "webhooks",
    "faceswap-worker",
    "comfy-worker",
    "storage-uploader",
)


def password_env(user: str) -> str:
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def nats_conf(values: dict[str, Any], port: int, monitor_port: int, store: Path) -> str:
    """nats.conf from the chart values: the accounts block and the JetStream merge."""
    merge = dict(values["config"]["merge"])
    jetstream = {"store_dir": str(store), **values["config"]["jetstream"].get("merge", {})}
    lines = [f'listen: "127.0.0.1:{port}"', f'http: "127.0.0.1:{monitor_port}"']
    lines.append(f"jetstream: {json.dumps(jetstream)}")
    for key, value in merge.items():
        lines.append(f"{key}: {json.dumps(value)}")
    text = "\n".join(lines) + "\n"
    # The chart writes << $VAR >> unquoted, so that nats-server reads the variable.
    for name in ("NATS_ADMIN_PASSWORD", *(password_env(user) for user in USERS)):
        text = text.replace(f'"<< ${name} >>"', f"${name}")
    assert "<<" not in text, "a << $VAR >> reference the test does not provide"
    return text


@dataclass
class AuthServer:
    port: int
    passwords: dict[str, str]
    log_file: Path
    violations: dict[str, list[str]] = field(default_factory=dict)

    def url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    async def connect(self, user: str) -> Client:
        seen = self.violations.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            seen.append(str(exc))

        return await nats.connect(self.url(user), error_cb=on_error, max_reconnect_attempts=3)


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    values = yaml.safe_load(VALUES.read_text())
    port, monitor_port = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(nats_conf(values, port, monitor_port, tmp_path / "js"))
    passwords = {user: f"pw-{user}-{os.getpid()}" for user in USERS}
    env = {**os.environ, "NATS_ADMIN_PASSWORD": "pw-admin"}
    env.update({password_env(user): password for user, password in passwords.items()})
    log_file = tmp_path / "nats-server.log"
    process = subprocess.Popen(
        [find_nats_server(), "-c", str(conf), "-l", str(log_file)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, log_file.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.02)  # polling a starting process
        yield AuthServer(port, passwords, log_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Services:
    clients: dict[str, Client]
    http: httpx.AsyncClient
    receiver: Receiver


@pytest.fixture
async def services(auth_server: AuthServer, tmp_path: Path) -> AsyncIterator[Services]:
    """Every service, each with its own NATS user, and a webhook receiver."""
    port = free_port()
    clients = {user: await auth_server.connect(user) for user in USERS}
    envs = {
        user: stack_env(
            auth_server.url(user),
            tmp_path / "storage",
            port,
            PIXELBUS_SSRF_ALLOW_NETWORKS="127.0.0.0/8",
            PIXELBUS_WEBHOOK_BACKOFF_S="0.2",
        )
        for user in USERS
    }
    # Like each service's main(): the gateway first (it owns the buckets), then the others
    # (the webhooks service provisions only its queue, its consumer and its log).
    gateway_js = clients["gateway"].jetstream()
    await ensure(gateway_js, BusSettings.from_env(envs["gateway"]))
    await ensure_webhooks(gateway_js, BusSettings.from_env(envs["gateway"]))
    for user in ("projector", "faceswap-worker", "comfy-worker", "storage-uploader"):
        await ensure(clients[user].jetstream(), BusSettings.from_env(envs[user]))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(GatewaySettings.from_env(envs["gateway"])),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(server.serve())]
    projector = ProjectorService(
        clients["projector"], ProjectorSettings.from_env(envs["projector"])
    )
    tasks.append(asyncio.create_task(projector.run()))
    deliveries = WebhookService(
        clients["webhooks"],
        BusSettings.from_env(envs["webhooks"]),
        WebhookSettings.from_env(envs["webhooks"]),
    )
    tasks.append(asyncio.create_task(deliveries.run()))
    receiver_context = webhook_receiver()
    receiver = await receiver_context.__aenter__()
    provider = build_provider(StorageSettings.from_env(envs["storage-uploader"]))
    uploader = Uploader(
        clients["storage-uploader"], provider, BusSettings.from_env(envs["storage-uploader"])
    )
    tasks.append(asyncio.create_task(uploader.run()))
    worker = await start_worker(envs["faceswap-worker"], clients["faceswap-worker"])
    tasks.append(asyncio.create_task(worker.run()))
    # the comm pool with the comfy-worker's user: the shared worker runtime serving the
    # probe workflow (no ComfyUI needed to exercise its NATS subjects)
    comfy_js = clients["comfy-worker"].jetstream()
    comfy = WorkerRuntime(
        nc=clients["comfy-worker"],
        js=comfy_js,
        pool=pool_for_environment("comm"),
        handlers={},
        settings=BusSettings.from_env(envs["comfy-worker"]),
        grace_s=2,
    )
    tasks.append(asyncio.create_task(comfy.run()))
    await asyncio.wait_for(worker.wait_ready(), 10)
    await asyncio.wait_for(comfy.wait_ready(), 10)
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn exposes no event for "listening"
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        yield Services(clients, http, receiver)
    finally:
        await http.aclose()
        worker.stop()
        comfy.stop()
        uploader.stop()
        projector.stop()
        deliveries.stop()
        server.should_exit = True
        await asyncio.wait(tasks, timeout=10)
        await receiver_context.__aexit__(None, None, None)
        await provider.aclose()
        for client in clients.values():
            await client.close()


async def refused(server: AuthServer, user: str, request: Awaitable[Any], subject: str) -> None:
    """The server refused ``user``'s publish to ``subject``: it drops it, so the request
    gets no answer, and it tells the client 'Permissions Violation for Publish to
    "<subject>"' (any other error, such as a JetStream API error, fails the test)."""
    seen = server.violations[user]
    before = len(seen)
    with pytest.raises(nats.errors.TimeoutError):
        await request
    wanted = f'permissions violation for publish to "{subject}"'.lower()

    async def told() -> bool | None:
        return True if any(wanted in v.lower() for v in seen[before:]) else None

    await eventually(told)


async def test_each_service_runs_with_only_its_own_permissions(
    services: Services, auth_server: AuthServer, astronaut: Path, grace_hopper: Path
) -> None:
    probe = {"workflow": "probe", "environment": "face_swap"}
    comm_probe = {"workflow": "probe", "environment": "comm"}
    # a face swap with inline inputs: the gateway puts them into the object store, the
    # worker reads them and stores its output, the uploader moves it and removes them
    wf = {
        "source_url": data_uri(astronaut, "image/png"),
        "target_url": data_uri(grace_hopper, "image/jpeg"),
        "resolution": "256x300",
    }
    swap = {
        "workflow": "face_swap",
        "environment": "face_swap",
        "params": {"input_data": {"wf_json": wf}},
    }
    hooked = {**probe, "webhook_url": services.receiver.url}
    kv = await services.clients["gateway"].jetstream().key_value(STATE_BUCKET)
    ids = []
    for body in (probe, comm_probe, swap, hooked):
        created = await services.http.post("/api/tasks/create", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["taskId"]
        ids.append(task_id)
        state = await wait_for_state(kv, task_id, lambda s: s.is_final, timeout=60)
        assert state.status.value == "COMPLETED", state
    # the webhook: planned by the projector, delivered by the webhooks service, its log
    # written by the webhooks service and read by the gateway
    [delivery] = await services.receiver.wait_for(1)
    assert delivery.headers["webhook-id"] == f"{ids[-1]}:completed"

    async def delivered() -> dict[str, Any] | None:
        answer = (await services.http.get(f"/api/tasks/{ids[-1]}/webhooks")).json()
        return answer if answer["status"] == "delivered" else None

    await eventually(delivered, timeout=15)
    # reads of the gateway's user: a final task followed live (direct gets, a core
    # subscription), the bounded wait of the face-swap route
    replay = await services.http.get(f"/api/tasks/{ids[0]}/events")
    assert replay.status_code == 200 and "event: end" in replay.text, replay.text
    waited = await services.http.post("/api/face-swap/process?wait=30", json=wf)
    assert waited.status_code == 200 and waited.json()["status"] == "COMPLETED", waited.text
    health = await services.http.get("/api/health")
    assert health.status_code == 200, health.text
    assert health.json()["projector"]["ok"] is True
    # the operator's KV rebuild runs with the projector's user (deploy/k8s/README.md)
    rebuilt = await rebuild(services.clients["projector"], f"{STATE_BUCKET}_REBUILT")
    assert rebuilt == 5
    violations = {user: found for user, found in auth_server.violations.items() if found}
    assert violations == {}, violations
    assert "Violation" not in auth_server.log_file.read_text()


async def test_what_each_service_must_not_do_is_refused(
    services: Services, auth_server: AuthServer
) -> None:
    uploader = services.clients["storage-uploader"].jetstream(timeout=1)
    worker = services.clients["faceswap-worker"].jetstream(timeout=1)
    webhooks = services.clients["webhooks"].jetstream(timeout=1)
    gateway_quick = services.clients["gateway"].jetstream(timeout=1)
    gateway = services.clients["gateway"].jetstream()
    forged = task_subject("face_swap", "probe", "created", "task_forged")
    # the uploader cannot create a task, nor cancel one
    await refused(
        auth_server, "storage-uploader", uploader.publish(forged, b"{}", stream=TASK_STREAM), forged
    )
    cancel = task_subject("face_swap", "probe", "cancel_requested", "t")
    await refused(auth_server, "storage-uploader", uploader.publish(cancel, b"{}"), cancel)
    # a worker cannot write the task state, complete a task, or create one
    worker_state = await worker.key_value(STATE_BUCKET)
    forged_state = f"$KV.{STATE_BUCKET}.task_forged"
    await refused(
        auth_server,
        "faceswap-worker",
        worker_state.put("task_forged", b'{"status": "COMPLETED"}'),
        forged_state,
    )
    completed = task_subject("face_swap", "probe", "completed", "task_forged")
    await refused(
        auth_server,
        "faceswap-worker",
        worker.publish(completed, b"{}", stream=TASK_STREAM),
        completed,
    )
    await refused(
        auth_server, "faceswap-worker", worker.publish(forged, b"{}", stream=TASK_STREAM), forged
    )
    # a worker cannot serve another pool's consumer nor publish another environment's events
    await refused(
        auth_server,
        "faceswap-worker",
        worker.consumer_info(TASK_STREAM, "pool-comfy"),
        f"$JS.API.CONSUMER.INFO.{TASK_STREAM}.pool-comfy",
    )
    started = task_subject("comm", "wf", "started", "task_forged")
    await refused(
        auth_server, "faceswap-worker", worker.publish(started, b"{}", stream=TASK_STREAM), started
    )
    # one writer per view: the gateway cannot write, purge or trim the task state, nor
    # write the delivery log, nor queue a webhook (the projector's and webhooks' jobs)
    gateway_state = await gateway_quick.key_value(STATE_BUCKET)
    await refused(
        auth_server,
        "gateway",
        gateway_state.put("task_forged", b'{"status": "COMPLETED"}'),
        forged_state,
    )
    await refused(
        auth_server,
        "gateway",
        gateway_state.create("task_forged_too", b"{}"),
        f"$KV.{STATE_BUCKET}.task_forged_too",
    )
    purge_state = f"$JS.API.STREAM.PURGE.KV_{STATE_BUCKET}"
    await refused(
        auth_server, "gateway", gateway_quick.purge_stream(f"KV_{STATE_BUCKET}"), purge_state
    )
    gateway_log = await gateway_quick.key_value(WEBHOOK_LOG_BUCKET)
    await refused(
        auth_server,
        "gateway",
        gateway_log.put("task_forged", b"{}"),
        f"$KV.{WEBHOOK_LOG_BUCKET}.task_forged",
    )
    queued = webhook_subject("task_forged")
    await refused(auth_server, "gateway", gateway_quick.publish(queued, b"{}"), queued)
    # the webhooks service cannot publish task events nor write the state
    await refused(
        auth_server, "webhooks", webhooks.publish(completed, b"{}", stream=TASK_STREAM), completed
    )
    webhooks_state = await webhooks.key_value(STATE_BUCKET)
    await refused(auth_server, "webhooks", webhooks_state.put("task_forged", b"{}"), forged_state)
    # no service purges the state bucket (only the projector's rebuild --replace may);
    # not even the gateway deletes the stream
    await refused(
        auth_server, "storage-uploader", uploader.purge_stream(f"KV_{STATE_BUCKET}"), purge_state
    )
    delete = f"$JS.API.STREAM.DELETE.{TASK_STREAM}"
    await refused(auth_server, "faceswap-worker", worker.delete_stream(TASK_STREAM), delete)
    await refused(auth_server, "gateway", gateway.delete_stream(TASK_STREAM), delete)
    # and nothing of it landed
    info = await gateway.stream_info(TASK_STREAM, subjects_filter="pixelbus.tasks.>")
    assert not [s for s in (info.state.subjects or {}) if "task_forged" in s or s.endswith(".t")]
    state_kv = await gateway.key_value(STATE_BUCKET)
    with pytest.raises(KeyNotFoundError):
        await state_kv.get("task_forged")
    with pytest.raises(KeyNotFoundError):
        await state_kv.get("task_forged_too")
    assert (await read_state(state_kv, "task_forged"))[0] is None
    queue = await gateway.stream_info(WEBHOOK_STREAM, subjects_filter="pixelbus.webhooks.>")
    assert webhook_subject("task_forged") not in (queue.state.subjects or {})
    assert "Publish Violation" in auth_server.log_file.read_text()
    for user in ("faceswap-worker", "gateway", "webhooks"):
        assert any("permissions violation" in v.lower() for v in auth_server.violations[user])


async def test_only_the_gateway_provisions_the_buckets(auth_server: AuthServer) -> None:
    """A worker started before any gateway cannot create the KV buckets (it restarts
    until the gateway made them); after the gateway's ``ensure``, its own passes."""
    settings = BusSettings(replicas=1)
    worker = await auth_server.connect("faceswap-worker")
    gateway = await auth_server.connect("gateway")
    try:
        with pytest.raises(TimeoutError):  # a refused request gets no answer
            await ensure(worker.jetstream(timeout=1), settings)
        refusals = " ".join(auth_server.violations["faceswap-worker"]).lower()
        assert '"$js.api.stream.create.kv_pixelbus_' in refusals, refusals
        await ensure(gateway.jetstream(), settings)
        await ensure(worker.jetstream(timeout=1), settings)
        assert (await gateway.jetstream().stream_info(f"KV_{STATE_BUCKET}")).config.name
    finally:
        await worker.close()
        await gateway.close()
