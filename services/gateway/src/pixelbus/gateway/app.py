"""The FastAPI application: wiring of settings, NATS and the routes.

The gateway is HTTP + publish + read: it validates requests, publishes events, and reads
the task state that the projector (``pixelbus.projector``, a service of its own and the
only writer of the state bucket) folds from them. Webhooks are planned by the projector
and delivered by ``pixelbus.webhooks``; the gateway only admits a task's ``webhook_url``
(the SSRF guard) and reads the delivery log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from nats.js import JetStreamContext

from pixelbus.contracts.subjects import (
    INDEX_BUCKET,
    PROJECTOR_CONSUMER,
    QUOTAS_BUCKET,
    RATES_BUCKET,
    TASK_STREAM,
    WEBHOOK_DISPATCHER_CONSUMER,
    WEBHOOK_LOG_BUCKET,
    WEBHOOK_STREAM,
)
from pixelbus.gateway.auth import KeyStore
from pixelbus.gateway.backlog import PoolBacklog, consumer_pending
from pixelbus.gateway.deps import Gateway
from pixelbus.gateway.follow import TaskFeed
from pixelbus.gateway.headers import SecurityHeaders
from pixelbus.gateway.hot import HotRoutes
from pixelbus.gateway.limits import BUSY_RETRY_AFTER_S, BodySizeLimit, ConcurrencyLimit
from pixelbus.gateway.queue import QueueBoard
from pixelbus.gateway.quotas import ActiveTasks, RateLimiter
from pixelbus.gateway.routes import (
    batch,
    dashboard,
    events,
    external_consumers,
    face_swap,
    health,
    listing,
    metrics,
    tasks,
    webhooks,
)
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.tasks import TaskService
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.runtime.connection import connect
from pixelbus.runtime.errors import CounterContention, SettingsError
from pixelbus.runtime.metrics import DEFAULT_CONSUMERS, process_metrics, sample_consumers
from pixelbus.runtime.probes import NotReady, ReadinessCheck
from pixelbus.runtime.provision import ensure, ensure_webhooks
from pixelbus.runtime.publisher import store_is_full
from pixelbus.runtime.task_index import TaskIndex
from pixelbus.runtime.webhook_log import DeliveryLogStore

__all__ = ["create_app"]

log = structlog.get_logger("pixelbus.gateway")

DESCRIPTION = """
pixelbus runs AI image tasks (ComfyUI workflows and face swaps) for API clients.

Create a task with `POST /api/tasks/create` (unified task format), follow it with
`GET /api/tasks/{task_id}`, or run a face swap and wait for it with
`POST /api/face-swap/process`. External GPU boxes lease work with
`GET /api/comm/task/fetch`.
"""


def gateway_ready(gw: Gateway) -> ReadinessCheck:
    """Ready while NATS is connected and the task-state bucket answers."""

    async def check() -> bool:
        if not gw.nc.is_connected:
            raise NotReady("not connected to NATS")
        await gw.tasks.kv.status()
        return True

    return check


#: The consumers whose lag ``/metrics`` shows: the pools (what KEDA scales on), the
#: uploader, the projector and the webhook dispatcher (the alerts watch them all).
SAMPLED_CONSUMERS = (
    *DEFAULT_CONSUMERS,
    (TASK_STREAM, PROJECTOR_CONSUMER),
    (WEBHOOK_STREAM, WEBHOOK_DISPATCHER_CONSUMER),
)


async def _sample_consumer_lag(js: JetStreamContext, interval_s: float = 5.0) -> None:
    """Consumer lag for ``/metrics``."""
    metrics = process_metrics()
    while True:
        await sample_consumers(js, metrics, SAMPLED_CONSUMERS)
        await asyncio.sleep(interval_s)


async def open_gateway(settings: GatewaySettings) -> Gateway:
    """Connect, provision and check what the gateway serves with; a start that must be
    refused (no active API key while keys are required) raises ``SettingsError``, whose
    one line the process shell prints before exiting with code 2."""
    log.info("gateway starting", settings=settings.redacted())
    nc = await connect(settings.bus.nats_url, "pixelbus-gateway")
    keys = KeyStore()
    try:
        js = nc.jetstream()
        await ensure(js, settings.bus)
        await ensure_webhooks(js, settings.bus)  # the delivery log this gateway reads
        service = TaskService(nc, js, max_input_image_bytes=settings.max_input_image_bytes)
        await service.open()
        await keys.start(js)
        if settings.auth_open:
            log.warning(
                "AUTHENTICATION IS OFF (PIXELBUS_AUTH=open): requests without an API key "
                "act as the 'anonymous' tenant. Never expose this gateway; set "
                "PIXELBUS_AUTH=required (the production default) with keys from "
                "'pixelbus keys create'."
            )
        elif keys.active_keys == 0:
            raise SettingsError(
                "PIXELBUS_AUTH=required but the keys bucket holds no active API key: "
                "create one with 'pixelbus keys create --name admin --owner ops --scope admin'"
                " (or start the development stack with './dev up --auth')"
            )
        return Gateway(
            settings=settings,
            nc=nc,
            js=js,
            tasks=service,
            keys=keys,
            rates=RateLimiter(await js.key_value(RATES_BUCKET), settings.rate_limit_rps),
            active=ActiveTasks(await js.key_value(QUOTAS_BUCKET), settings.max_active_tasks),
            backlog=PoolBacklog(consumer_pending(js), settings.max_pending_tasks),
            webhook_policy=SsrfPolicy(allow_networks=settings.ssrf_allow_networks),
            webhook_log=DeliveryLogStore(await js.key_value(WEBHOOK_LOG_BUCKET)),
            queues=QueueBoard(nc, js),
            feed=TaskFeed(nc),
            index=TaskIndex(await js.key_value(INDEX_BUCKET)),
        )
    except BaseException:
        await keys.stop()
        await nc.close()
        raise


def create_app(settings: GatewaySettings, gateway: Gateway | None = None) -> FastAPI:
    """The API; it serves with ``gateway`` (opened at start when not given) and closes
    it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = gateway if gateway is not None else await open_gateway(settings)
        lag_sampler = asyncio.create_task(_sample_consumer_lag(gw.js))
        app.state.gateway = gw
        try:
            yield
        finally:
            lag_sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_sampler
            await gw.keys.stop()
            await gw.nc.close()
            log.info("gateway stopped")

    app = FastAPI(
        title="pixelbus",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # innermost: the hot routes still pass the limits and get the security headers
    app.add_middleware(HotRoutes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # outside the body limit: a refused request is not read at all
    app.add_middleware(ConcurrencyLimit, max_requests=settings.max_concurrent_requests)
    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:  # closed unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            max_age=600,
        )

    @app.exception_handler(nats.errors.Error)
    @app.exception_handler(TimeoutError)
    async def bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """NATS without a stream leader (an election) or reconnecting: retry shortly. A
        full store: retry later (nothing was accepted)."""
        if store_is_full(exc):
            log.warning("task store full", path=request.url.path, error=repr(exc))
            return JSONResponse(
                status_code=503,
                content={
                    "detail": "the task store is full right now; nothing was accepted, retry later"
                },
                headers={"Retry-After": "30"},
            )
        log.warning("message bus unavailable", path=request.url.path, error=repr(exc))
        return JSONResponse(
            status_code=503,
            content={"detail": "the message bus is unavailable right now; retry shortly"},
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(CounterContention)
    async def counter_busy(request: Request, exc: Exception) -> JSONResponse:
        """A rate or quota counter that other replicas kept updating first: busy."""
        log.warning("counter contention", path=request.url.path, error=str(exc))
        return JSONResponse(
            status_code=503,
            content={"detail": "the gateway is busy counting this key's requests; retry shortly"},
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: Exception) -> JSONResponse:
        """JSON nested past what a parser will follow: the client's mistake, not ours."""
        return JSONResponse(status_code=400, content={"detail": "JSON nests too deep"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    app.include_router(tasks.router)
    app.include_router(face_swap.router)
    app.include_router(batch.router)
    app.include_router(external_consumers.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(listing.router)
    app.include_router(dashboard.router)
    if settings.storage_provider == "local":
        settings.local_storage_dir.mkdir(parents=True, exist_ok=True)
        app.mount("/files", StaticFiles(directory=settings.local_storage_dir), name="files")
    return app
