"""What route handlers share: the running gateway's services, and error answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from nats.js import JetStreamContext

from pixelbus.contracts.validation import FieldError
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.tasks import TaskService

__all__ = ["Gateway", "error_response", "gateway", "validation_response"]


@dataclass
class Gateway:
    settings: GatewaySettings
    nc: Client
    js: JetStreamContext
    tasks: TaskService
    extras: dict[str, Any] = field(default_factory=dict)


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def validation_response(errors: list[FieldError]) -> JSONResponse:
    detail = [{"loc": list(e.loc), "msg": e.msg, "type": e.type} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message, **extra})
