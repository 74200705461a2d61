"""``GET /api/health``: the gateway and what it depends on.

Workers and storage uploaders publish their presence in the ``PIXELBUS_WORKERS`` KV
bucket (entries expire when they stop); the uploaders' entries (pool ``storage``) carry
their provider and its last verdict (checked now and then by the uploader, and updated by
every upload), so the storage section costs one KV read, never a call to the provider.

The ``projector`` section is the projector service as the bus sees it (one consumer info
request): its durable consumer's backlog (``pending``: events not yet handed to a
projector; ``ack_pending``: handed out, not yet folded), whether a projector is pulling
right now (``pulling``: an open pull request; a running projector keeps one open almost
all the time) and when it was last handed events (``last_active``). ``ok`` is false when
there is a backlog and no projector pulls: reads then come from the stream (``PENDING``)
and states stop moving; ``status`` is then ``degraded``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pixelbus.contracts.subjects import (
    PROJECTOR_CONSUMER,
    STATE_BUCKET,
    TASK_STREAM,
    WORKERS_BUCKET,
)
from pixelbus.gateway.deps import Gateway, gateway
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.direct import direct_batch

router = APIRouter(tags=["health"])

_STORAGE_POOL = "storage"  # the storage uploaders' presence entries


async def _check(coro: Any, timeout: float = 2.0) -> tuple[bool, Any]:
    try:
        return True, await asyncio.wait_for(coro, timeout)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def _workers(gw: Gateway) -> list[dict[str, Any]]:
    """Every live worker's presence, with one direct get (the last entry of each key)."""
    request = {"multi_last": [f"$KV.{WORKERS_BUCKET}.>"], "batch": 10_000}
    oldest = utcnow() - timedelta(seconds=gw.settings.workers_seen_s)
    seen = []
    for msg in await direct_batch(gw.nc, f"KV_{WORKERS_BUCKET}", request):
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        presence = json.loads(msg.data)
        if _heard_at(presence) >= oldest:  # older: it stopped heartbeating (died)
            seen.append(presence)
    return seen


def _heard_at(presence: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(presence.get("at")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


@router.get(
    "/api/health",
    summary="Health of the gateway, NATS, JetStream, the KV bucket, the projector and the workers",
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
    workers_ok, seen = await _check(_workers(gw))
    seen = seen if workers_ok else []
    body["workers"] = [w for w in seen if w.get("pool") != _STORAGE_POOL]
    body["storage"] = _storage([w for w in seen if w.get("pool") == _STORAGE_POOL])
    body["pools"] = dict(Counter(worker.get("pool", "?") for worker in body["workers"]))
    body["projector"] = await _projector(gw)
    healthy = js_ok and kv_ok
    degraded = body["storage"]["reachable"] is False or body["projector"]["ok"] is False
    body["status"] = ("degraded" if degraded else "ok") if healthy else "down"
    return JSONResponse(status_code=200 if healthy else 503, content=body)


async def _projector(gw: Gateway) -> dict[str, Any]:
    """The projector's durable consumer: its backlog and whether anyone pulls it."""
    ok, info = await _check(gw.js.consumer_info(TASK_STREAM, PROJECTOR_CONSUMER))
    if not ok:
        return {"consumer": PROJECTOR_CONSUMER, "ok": None, "error": info}
    pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
    pulling = (info.num_waiting or 0) > 0
    last = info.delivered.last_active if info.delivered is not None else None
    return {
        "consumer": PROJECTOR_CONSUMER,
        "ok": pulling or pending == 0,
        "pulling": pulling,
        "pending": pending,
        "ack_pending": ack_pending,
        "last_active": last.isoformat() if last is not None else None,
    }


def _storage(uploaders: list[dict[str, Any]]) -> dict[str, Any]:
    """The storage provider as its uploaders last saw it.

    ``reachable`` is ``None`` while no uploader runs or none has a verdict yet, ``False``
    when any uploader cannot reach its provider (with that uploader's error).
    """
    providers = sorted({str(u.get("provider")) for u in uploaders})
    verdicts = [u for u in uploaders if u.get("reachable") is not None]
    failing = [u for u in verdicts if u.get("reachable") is False]
    checked = [str(u["checked_at"]) for u in verdicts if u.get("checked_at")]
    return {
        "provider": providers[0] if len(providers) == 1 else (providers or None),
        "uploaders": len(uploaders),
        "reachable": (not failing) if verdicts else None,
        "error": failing[0].get("error") if failing else None,
        "checked_at": max(checked) if checked else None,
    }
