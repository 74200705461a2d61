"""``GET /metrics``: the gateway's Prometheus metrics (task counters, consumer lag, …)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pixelbus.runtime.metrics import process_metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(process_metrics().registry), media_type=CONTENT_TYPE_LATEST)
