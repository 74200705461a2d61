"""``GET /metrics``: the gateway's Prometheus metrics (task counters, consumer lag, …).

Admin only on the API port; Prometheus scrapes the probe port (``PIXELBUS_PROBE_PORT``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pixelbus.contracts.keys import ADMIN
from pixelbus.gateway.auth import AUTH_RESPONSES, require
from pixelbus.runtime.metrics import process_metrics

router = APIRouter(
    tags=["health"], dependencies=[Depends(require(ADMIN))], responses=AUTH_RESPONSES
)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(process_metrics().registry), media_type=CONTENT_TYPE_LATEST)
