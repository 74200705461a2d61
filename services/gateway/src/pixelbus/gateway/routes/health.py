"""``GET /api/health``: the gateway and what it depends on."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pixelbus.contracts.subjects import STATE_BUCKET, TASK_STREAM, WORKERS_BUCKET
from pixelbus.gateway.deps import Gateway, gateway

router = APIRouter(tags=["health"])


async def _check(coro: Any, timeout: float = 2.0) -> tuple[bool, Any]:
    try:
        return True, await asyncio.wait_for(coro, timeout)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def _workers(gw: Gateway) -> list[dict[str, Any]]:
    kv = await gw.js.key_value(WORKERS_BUCKET)
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError on an empty bucket
        return []
    seen = []
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            seen.append(json.loads(entry.value))
    return seen


@router.get(
    "/api/health",
    summary="Health of the gateway, NATS, JetStream, the KV bucket and the workers",
    responses={503: {"description": "NATS or JetStream unreachable"}},
)
async def health(gw: Annotated[Gateway, Depends(gateway)]) -> JSONResponse:
    connected = gw.nc.is_connected
    body: dict[str, Any] = {"nats": {"connected": connected}}
    if not connected:
        body["status"] = "down"
        return JSONResponse(status_code=503, content=body)
    js_ok, stream = await _check(gw.js.stream_info(TASK_STREAM))
    body["jetstream"] = (
        {"ok": True, "stream": TASK_STREAM, "messages": stream.state.messages}
        if js_ok
        else {"ok": False, "error": stream}
    )
    kv_ok, kv_status = await _check(gw.js.key_value(STATE_BUCKET))
    if kv_ok:
        kv_ok, kv_status = await _check(kv_status.status())
    body["kv"] = (
        {"ok": kv_ok, "bucket": STATE_BUCKET} if kv_ok else {"ok": False, "error": kv_status}
    )
    workers_ok, workers = await _check(_workers(gw))
    body["workers"] = workers if workers_ok else []
    pools: dict[str, int] = {}
    for worker in body["workers"]:
        pools[worker.get("pool", "?")] = pools.get(worker.get("pool", "?"), 0) + 1
    body["pools"] = pools
    projector = gw.extras.get("projector")
    body["projector"] = {"embedded": projector is not None}
    healthy = js_ok and kv_ok
    body["status"] = "ok" if healthy else "down"
    return JSONResponse(status_code=200 if healthy else 503, content=body)
