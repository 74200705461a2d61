"""Gateway settings from the environment (names of the replaced system where they exist)."""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pixelbus.runtime.settings import (
    BusSettings,
    Networks,
    Reader,
    Settings,
    integer,
    networks,
    number,
    one_of,
    path,
    section,
    setting,
    words,
)

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings(Settings):
    bus: BusSettings = section(BusSettings)
    app_env: str = setting("APP_ENV", "development")
    """`production` requires the secrets and API keys"""
    host: str = setting("PIXELBUS_HOST", "127.0.0.1")
    """where the gateway listens"""
    port: int = setting("PIXELBUS_PORT", 8000, integer(0, 65535))
    """the gateway's port"""
    max_body_bytes: int = setting("PIXELBUS_MAX_BODY_BYTES", 20 << 20, integer(1024, 1 << 30))
    """request body limit (413 beyond)"""
    max_input_image_bytes: int = setting(
        "PIXELBUS_MAX_INPUT_IMAGE_BYTES", 15 << 20, integer(1024, 1 << 30)
    )
    """largest input image"""
    face_swap_wait_s: float = setting("PIXELBUS_FACE_SWAP_WAIT_S", 60.0, number(0, 3600))
    """default wait of `/api/face-swap/process`"""
    face_swap_max_wait_s: float = setting("PIXELBUS_FACE_SWAP_MAX_WAIT_S", 300.0, number(0, 3600))
    """longest wait of `/api/face-swap/process`"""
    fetch_max_wait_s: float = setting("PIXELBUS_FETCH_MAX_WAIT_S", 30.0, number(0, 300))
    """longest long-poll of `/api/comm/task/fetch`"""
    lease_secret: str = setting("PIXELBUS_LEASE_SECRET", "", secret=True)
    """signs external consumers' lease tokens; the same on every gateway replica (required in
    production; unset, random per process)"""
    storage_provider: str = setting("STORAGE_PROVIDER", "local")
    """the uploader's provider (`local`: the gateway serves files)"""
    local_storage_dir: Path = setting("PIXELBUS_LOCAL_STORAGE_DIR", Path(".pixelbus/storage"), path)
    """where `local` storage writes (served at `/files`)"""
    #: A worker whose presence (written every 5 s) is older than this is not counted: three
    #: missed heartbeats, not the presence bucket's 30 s expiry.
    workers_seen_s: float = 15.0
    auth: str = setting("PIXELBUS_AUTH", "open", one_of("open", "required"))
    """API keys required or not (see *API keys*); `open`: requests without a key act as the
    `anonymous` tenant; `required` by default and the only choice in production"""
    rate_limit_rps: float = setting("PIXELBUS_RATE_LIMIT_RPS", 0.0, number(0, 1e6))
    """per-key request rate (0: no limit); `20` by default when keys are required"""
    max_active_tasks: int = setting("PIXELBUS_MAX_ACTIVE_TASKS", 0, integer(0, 10**7))
    """per-tenant active tasks (429 beyond; 0: no limit); `100` by default when keys are required"""
    #: Several replicas can pass it by what the others accept before their next sample
    #: (``pixelbus.gateway.backlog`` says why, and why not a stream limit or a shared counter).
    max_pending_tasks: int = setting("PIXELBUS_MAX_PENDING_TASKS", 10_000, integer(0, 10**9))
    """tasks waiting in one pool (created, not yet handed to a worker) before a create is refused
    with 503 and `Retry-After` (0: no limit)"""
    max_concurrent_requests: int = setting(
        "PIXELBUS_MAX_CONCURRENT_REQUESTS", 2048, integer(1, 10**6)
    )
    """requests (live followers included) in one gateway at once; one more answers 503 with
    `Retry-After: 1` at once"""
    cors_origins: tuple[str, ...] = setting(
        "PIXELBUS_CORS_ORIGINS", (), words, default_doc="empty: CORS closed"
    )
    """comma-separated origins allowed to call the API from a browser"""
    ssrf_allow_networks: Networks = setting(
        "PIXELBUS_SSRF_ALLOW_NETWORKS", (), networks(strict=False)
    )
    """CIDRs the SSRF guard admits in a task's `webhook_url` at creation (development only)"""

    @property
    def auth_open(self) -> bool:
        return self.auth == "open"

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        production = reader.get("APP_ENV") == "production"
        given: dict[str, Any] = {}
        if reader.get("PIXELBUS_LEASE_SECRET") is None:
            if production:
                reader.refuse(
                    "PIXELBUS_LEASE_SECRET",
                    "PIXELBUS_LEASE_SECRET is required when APP_ENV=production "
                    "(shared by every gateway replica to sign consumer leases)",
                )
            given["lease_secret"] = secrets.token_hex(32)
        auth = reader.get("PIXELBUS_AUTH") or ("required" if production else "open")
        if auth == "open" and production:
            reader.refuse("PIXELBUS_AUTH", "PIXELBUS_AUTH=open is refused when APP_ENV=production")
        if reader.get("PIXELBUS_AUTH") is None:
            given["auth"] = auth
        required = auth == "required"
        if reader.get("PIXELBUS_RATE_LIMIT_RPS") is None:
            given["rate_limit_rps"] = 20.0 if required else 0.0
        if reader.get("PIXELBUS_MAX_ACTIVE_TASKS") is None:
            given["max_active_tasks"] = 100 if required else 0
        return reader.fields(cls, **given)
