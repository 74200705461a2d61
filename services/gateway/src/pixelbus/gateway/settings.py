"""Gateway settings from the environment (names of the replaced system where they exist)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.probes import ProbeSettings
from pixelbus.runtime.settings import BusSettings, env_float, env_int, env_networks, env_str

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    bus: BusSettings = field(default_factory=BusSettings)
    app_env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 20 * 1024 * 1024
    max_input_image_bytes: int = 15 * 1024 * 1024
    face_swap_wait_s: float = 60.0
    face_swap_max_wait_s: float = 300.0
    fetch_max_wait_s: float = 30.0
    lease_secret: str = ""
    storage_provider: str = "local"
    local_storage_dir: Path = Path(".pixelbus/storage")
    #: A worker whose presence (written every 5 s) is older than this is not counted: three
    #: missed heartbeats, not the presence bucket's 30 s expiry.
    workers_seen_s: float = 15.0
    #: The probe server (``/healthz``, ``/readyz``, ``/metrics`` on its own port) runs only
    #: when ``PIXELBUS_PROBE_PORT`` is set, as the Kubernetes manifests do.
    probes: ProbeSettings | None = None
    #: ``PIXELBUS_AUTH=open``: requests without a key act as the ``anonymous`` tenant
    #: (the development default); ``required`` (the production default and only choice).
    auth_open: bool = True
    rate_limit_rps: float = 0.0
    max_active_tasks: int = 0
    #: Back-pressure on the queues (``PIXELBUS_MAX_PENDING_TASKS``): at most this many
    #: tasks may wait in one pool (its consumer's ``num_pending``: created, not yet handed
    #: to a worker; what workers hold is bounded by the consumer's ``max_ack_pending``). A
    #: create past it answers 503 with ``Retry-After`` and publishes nothing; 0: no limit.
    #: Each replica samples the server's count (at most every 0.25 s, and again when its
    #: estimate reaches the limit) and adds its own creates at once, so one replica holds
    #: the limit exactly; with several, the backlog can pass it by what the other replicas
    #: accept before their next sample (``pixelbus.gateway.backlog`` says why not a stream
    #: limit or a shared counter). A tenant's own limit is ``max_active_tasks`` (429).
    max_pending_tasks: int = 10_000
    #: At most this many requests in this process at once, live followers (SSE, WebSocket)
    #: included (``PIXELBUS_MAX_CONCURRENT_REQUESTS``); one more answers 503 with
    #: ``Retry-After: 1`` at once, never waits in a queue. Memory is bounded by it (times
    #: ``max_body_bytes`` in the worst case).
    max_concurrent_requests: int = 2048
    cors_origins: tuple[str, ...] = ()
    #: Networks the SSRF guard admits in a task's ``webhook_url`` at creation
    #: (``PIXELBUS_SSRF_ALLOW_NETWORKS``, development and tests; the webhooks service
    #: reads the same setting for its deliveries).
    ssrf_allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        app_env = env_str(environ, "APP_ENV", "development")
        lease_secret = environ.get("PIXELBUS_LEASE_SECRET", "")
        if not lease_secret:
            if app_env == "production":
                raise SettingsError(
                    "PIXELBUS_LEASE_SECRET is required when APP_ENV=production "
                    "(shared by every gateway replica to sign consumer leases)"
                )
            lease_secret = secrets.token_hex(32)
        auth = env_str(environ, "PIXELBUS_AUTH", "required" if app_env == "production" else "open")
        if auth not in ("open", "required"):
            raise SettingsError(f"PIXELBUS_AUTH={auth!r} is not open or required")
        if auth == "open" and app_env == "production":
            raise SettingsError("PIXELBUS_AUTH=open is refused when APP_ENV=production")
        required = auth == "required"
        return cls(
            bus=BusSettings.from_env(environ),
            app_env=app_env,
            host=env_str(environ, "PIXELBUS_HOST", cls.host),
            port=env_int(environ, "PIXELBUS_PORT", cls.port, lo=0, hi=65535),
            max_body_bytes=env_int(
                environ, "PIXELBUS_MAX_BODY_BYTES", cls.max_body_bytes, lo=1024, hi=1 << 30
            ),
            max_input_image_bytes=env_int(
                environ,
                "PIXELBUS_MAX_INPUT_IMAGE_BYTES",
                cls.max_input_image_bytes,
                lo=1024,
                hi=1 << 30,
            ),
            face_swap_wait_s=env_float(
                environ, "PIXELBUS_FACE_SWAP_WAIT_S", cls.face_swap_wait_s, lo=0, hi=3600
            ),
            face_swap_max_wait_s=env_float(
                environ, "PIXELBUS_FACE_SWAP_MAX_WAIT_S", cls.face_swap_max_wait_s, lo=0, hi=3600
            ),
            fetch_max_wait_s=env_float(
                environ, "PIXELBUS_FETCH_MAX_WAIT_S", cls.fetch_max_wait_s, lo=0, hi=300
            ),
            lease_secret=lease_secret,
            storage_provider=env_str(environ, "STORAGE_PROVIDER", "local"),
            local_storage_dir=Path(
                env_str(environ, "PIXELBUS_LOCAL_STORAGE_DIR", str(cls.local_storage_dir))
            ),
            probes=ProbeSettings.from_env(environ) if environ.get("PIXELBUS_PROBE_PORT") else None,
            auth_open=not required,
            rate_limit_rps=env_float(
                environ, "PIXELBUS_RATE_LIMIT_RPS", 20.0 if required else 0.0, lo=0, hi=1e6
            ),
            max_active_tasks=env_int(
                environ, "PIXELBUS_MAX_ACTIVE_TASKS", 100 if required else 0, lo=0, hi=10**7
            ),
            max_pending_tasks=env_int(
                environ, "PIXELBUS_MAX_PENDING_TASKS", cls.max_pending_tasks, lo=0, hi=10**9
            ),
            max_concurrent_requests=env_int(
                environ,
                "PIXELBUS_MAX_CONCURRENT_REQUESTS",
                cls.max_concurrent_requests,
                lo=1,
                hi=10**6,
            ),
            cors_origins=tuple(
                origin.strip()
                for origin in environ.get("PIXELBUS_CORS_ORIGINS", "").split(",")
                if origin.strip()
            ),
            ssrf_allow_networks=env_networks(environ, "PIXELBUS_SSRF_ALLOW_NETWORKS", strict=False),
        )

    def redacted(self) -> dict[str, Any]:
        return {
            "bus": self.bus.redacted(),
            "app_env": self.app_env,
            "host": self.host,
            "port": self.port,
            "max_body_bytes": self.max_body_bytes,
            "face_swap_wait_s": self.face_swap_wait_s,
            "lease_secret": "***",
            "auth": "open" if self.auth_open else "required",
            "rate_limit_rps": self.rate_limit_rps,
            "max_active_tasks": self.max_active_tasks,
            "max_pending_tasks": self.max_pending_tasks,
            "max_concurrent_requests": self.max_concurrent_requests,
            "cors_origins": list(self.cors_origins),
            "storage_provider": self.storage_provider,
            "local_storage_dir": str(self.local_storage_dir),
            "ssrf_allow_networks": [str(n) for n in self.ssrf_allow_networks],
        }
