"""The whole pixelbus stack in one test process, against a real nats-server.

The gateway is served by uvicorn on a random loopback port (real HTTP); the face-swap
worker, the storage uploader, the projector (with its webhook planning and the
exhausted-task watcher) and the webhook dispatcher run as asyncio tasks, each the same
object its service's ``__main__`` runs. A fault test runs the worker as a subprocess
instead, so that it can be killed for real; ``serve_gateway`` adds gateway replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client

from pixelbus.contracts.subjects import OUTPUTS_BUCKET, STATE_BUCKET, pool_for_environment
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.handler import FaceSwapHandler
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.gateway.app import create_app
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.wire import CorkedHttpToolsProtocol
from pixelbus.projector.service import ProjectorService
from pixelbus.projector.settings import ProjectorSettings
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.worker import WorkerRuntime
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import StorageSettings
from pixelbus.storage_uploader.uploader import Uploader
from pixelbus.testkit.nats_server import free_port
from pixelbus.webhooks.service import WebhookService
from pixelbus.webhooks.settings import WebhookSettings

_ENGINE: LandmarkEngine | None = None


def shared_engine() -> LandmarkEngine:
    """The landmark engine loads its models once per test session."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = LandmarkEngine()
    return _ENGINE


def stack_env(nats_url: str, storage_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "APP_ENV": "test",
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": str(storage_dir),
        "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PIXELBUS_PORT": str(port),
        "PIXELBUS_ACK_WAIT_S": "2",
        "PIXELBUS_ACK_WAIT_S_COMFY": "2",
        "PIXELBUS_RETRY_DELAY_S": "0.1",
        "PIXELBUS_MAX_DELIVER": "3",
        "PIXELBUS_PROGRESS_INTERVAL_S": "0.05",
        **extra,
    }


@dataclass
class Stack:
    env: dict[str, str]
    http: httpx.AsyncClient
    nc: Client
    base_url: str
    storage_dir: Path
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stoppers: list[Any] = field(default_factory=list)

    async def kv(self) -> Any:
        return await self.nc.jetstream().key_value(STATE_BUCKET)


async def start_worker(env: dict[str, str], nc: Client) -> WorkerRuntime:
    settings = FaceSwapSettings.from_env(env)
    js = nc.jetstream()
    handler = FaceSwapHandler(
        {"builtin": shared_engine()}, settings, ObjectReader(js, OUTPUTS_BUCKET)
    )
    return WorkerRuntime(
        nc=nc,
        js=js,
        pool=pool_for_environment("face_swap"),
        handlers={"face_swap": handler},
        settings=settings.bus,
        concurrency=settings.concurrency,
        grace_s=2,
    )


@contextlib.asynccontextmanager
async def serve_gateway(
    env: dict[str, str], port: int | None = None, app: FastAPI | None = None
) -> AsyncIterator[str]:
    """One gateway replica (uvicorn, real HTTP) until the block ends; its base URL.
    ``app``: a gateway app made by the test (``create_app`` of ``env`` otherwise)."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app or create_app(GatewaySettings.from_env({**env, "PIXELBUS_PORT": str(port)})),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            http=CorkedHttpToolsProtocol,  # as the gateway's __main__ serves
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # a failed start raises here
                raise RuntimeError("the gateway stopped while starting")
            await asyncio.sleep(0.01)  # uvicorn exposes no event for "listening"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait({serving}, timeout=10)


@contextlib.asynccontextmanager
async def running_stack(
    nats_url: str,
    tmp: Path,
    *,
    worker: bool = True,
    uploader: bool = True,
    projector: bool = True,
    webhooks: bool = True,
    **extra: str,
) -> AsyncIterator[Stack]:
    port = free_port()
    env = stack_env(nats_url, tmp / "storage", port, **extra)
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    bus = BusSettings.from_env(env)
    await ensure(nc.jetstream(), bus)
    tasks: list[asyncio.Task[Any]] = []
    stoppers: list[Any] = []
    storage = StorageSettings.from_env(env)  # STORAGE_PROVIDER and its settings choose
    provider = build_provider(storage)
    if projector:
        projection = ProjectorService(nc, ProjectorSettings.from_env(env))
        await projection.prepare()
        tasks.append(asyncio.create_task(projection.run()))
        stoppers.append(projection.stop)
    if webhooks:
        deliveries = WebhookService(nc, bus, WebhookSettings.from_env(env))
        tasks.append(asyncio.create_task(deliveries.run()))
        stoppers.append(deliveries.stop)
    if uploader:
        in_process_uploader = Uploader(
            nc,
            provider,
            bus,
            retry=storage.retry,
            health_interval_s=storage.health_interval_s,
        )
        tasks.append(asyncio.create_task(in_process_uploader.run()))
        stoppers.append(in_process_uploader.stop)
    if worker:
        runtime = await start_worker(env, nc)
        tasks.append(asyncio.create_task(runtime.run()))
        stoppers.append(runtime.stop)
        await asyncio.wait_for(runtime.wait_ready(), 10)
    try:
        async with serve_gateway(env, port) as base_url:
            http = httpx.AsyncClient(base_url=base_url, timeout=30)
            stack = Stack(env, http, nc, base_url, tmp / "storage", tasks, stoppers)
            try:
                yield stack
            finally:
                await http.aclose()
    finally:
        for stop in stoppers:
            stop()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await provider.aclose()
        await nc.close()


def spawn_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The face-swap worker as its own process (for kill -9)."""
    return spawn_service("pixelbus.faceswap_worker", env)


def spawn_service(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A service as its own process (``python -m module``) with the stack's settings."""
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )
