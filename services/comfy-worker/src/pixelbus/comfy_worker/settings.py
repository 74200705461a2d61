"""comfy-worker settings from the environment, validated once at start.

``COMFYUI_URL`` (the seed's name) lists one or more ComfyUI servers, comma-separated.
Remote agent mode is on when ``PIXELBUS_COMFY_AGENT_URL`` names a gateway: the worker
then takes tasks over HTTP and needs no NATS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pixelbus.media.images import AnimatedInputs, animated_inputs_from
from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import (
    BusSettings,
    env_bool,
    env_float,
    env_int,
    env_networks,
    env_str,
)

__all__ = ["AgentSettings", "ComfySettings", "parse_urls"]

DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"


def parse_urls(raw: str, name: str) -> tuple[str, ...]:
    urls: list[str] = []
    for part in raw.split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise SettingsError(f"{name}: {url!r} is not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise SettingsError(f"{name}: {url!r} is not an http(s) URL with a host")
        if url in urls:
            raise SettingsError(f"{name}: {url!r} is listed twice")
        urls.append(url)
    if not urls:
        raise SettingsError(f"{name} lists no server")
    return tuple(urls)


def _csv(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in environ.get(name, "").split(",") if p.strip())


@dataclass(frozen=True)
class AgentSettings:
    """Remote agent mode: tasks come from a gateway's ``/api/comm/task/*`` endpoints."""

    gateway_url: str
    name: str = "comfy-agent"
    poll_wait_s: float = 10.0
    heartbeat_s: float = 5.0
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AgentSettings | None:
        raw = environ.get("PIXELBUS_COMFY_AGENT_URL", "").strip()
        if not raw:
            return None
        (url,) = parse_urls(raw, "PIXELBUS_COMFY_AGENT_URL")[:1]
        return cls(
            gateway_url=url,
            name=env_str(environ, "PIXELBUS_COMFY_AGENT_NAME", cls.name),
            poll_wait_s=env_float(
                environ, "PIXELBUS_COMFY_AGENT_POLL_S", cls.poll_wait_s, lo=0, hi=60
            ),
            heartbeat_s=env_float(
                environ, "PIXELBUS_COMFY_AGENT_HEARTBEAT_S", cls.heartbeat_s, lo=0.05, hi=600
            ),
            token=environ.get("PIXELBUS_COMFY_AGENT_TOKEN", "").strip() or None,
        )


@dataclass(frozen=True)
class ComfySettings:
    bus: BusSettings = field(default_factory=BusSettings)
    urls: tuple[str, ...] = (DEFAULT_COMFYUI_URL,)
    backend_capacity: int = 2
    """Prompts one worker keeps on one server at once (running + queued there)."""
    task_timeout_s: float = 600.0
    http_timeout_s: float = 30.0
    health_interval_s: float = 5.0
    reconnect_s: float = 10.0
    """How long a run waits for its server to come back before giving the task back."""
    poll_interval_s: float = 5.0
    """A safety net beside the WebSocket: ``/history`` is asked this often while waiting."""
    progress_delay_s: float = 0.25
    """No progress is reported before a task has run this long (0: from the start): a task
    done sooner publishes none, since its completion follows at once."""
    allowed_node_types: frozenset[str] | None = None
    raw_graphs: bool = True
    allowed_input_files: tuple[str, ...] = ()
    templates_dir: Path | None = None
    include_previews: bool = False
    max_output_bytes: int = 512 * 1024 * 1024
    max_image_bytes: int = 15 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    animated_inputs: AnimatedInputs = "first_frame"
    fetch_timeout_s: float = 20.0
    ssrf_allow_networks: tuple[IPNetwork, ...] = ()
    agent: AgentSettings | None = None

    @property
    def concurrency(self) -> int:
        return self.backend_capacity * len(self.urls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ComfySettings:
        urls = parse_urls(environ.get("COMFYUI_URL", "") or DEFAULT_COMFYUI_URL, "COMFYUI_URL")
        allowed = _csv(environ, "PIXELBUS_COMFY_ALLOWED_NODE_TYPES")
        templates = environ.get("PIXELBUS_COMFY_TEMPLATES_DIR", "").strip()
        if templates and not Path(templates).is_dir():
            raise SettingsError(f"PIXELBUS_COMFY_TEMPLATES_DIR={templates!r} is not a directory")
        raw_graphs = env_bool(environ, "PIXELBUS_COMFY_RAW_GRAPHS", cls.raw_graphs)
        if environ.get("APP_ENV") == "production" and raw_graphs and not allowed:
            raise SettingsError(
                "APP_ENV=production: raw ComfyUI graphs need PIXELBUS_COMFY_ALLOWED_NODE_TYPES "
                "(the node types clients may use), or PIXELBUS_COMFY_RAW_GRAPHS=false "
                "(stored workflows only)"
            )
        return cls(
            bus=BusSettings.from_env(environ),
            urls=urls,
            backend_capacity=env_int(
                environ, "PIXELBUS_COMFY_BACKEND_CAPACITY", cls.backend_capacity, lo=1, hi=64
            ),
            task_timeout_s=env_float(
                environ, "PIXELBUS_COMFY_TASK_TIMEOUT_S", cls.task_timeout_s, lo=0.5, hi=86400
            ),
            http_timeout_s=env_float(
                environ, "PIXELBUS_COMFY_HTTP_TIMEOUT_S", cls.http_timeout_s, lo=0.5, hi=600
            ),
            health_interval_s=env_float(
                environ, "PIXELBUS_COMFY_HEALTH_INTERVAL_S", cls.health_interval_s, lo=0.05, hi=600
            ),
            reconnect_s=env_float(
                environ, "PIXELBUS_COMFY_RECONNECT_S", cls.reconnect_s, lo=0.1, hi=600
            ),
            poll_interval_s=env_float(
                environ, "PIXELBUS_COMFY_POLL_INTERVAL_S", cls.poll_interval_s, lo=0.1, hi=600
            ),
            progress_delay_s=env_float(
                environ, "PIXELBUS_COMFY_PROGRESS_DELAY_S", cls.progress_delay_s, lo=0, hi=600
            ),
            allowed_node_types=frozenset(allowed) if allowed else None,
            raw_graphs=raw_graphs,
            allowed_input_files=_csv(environ, "PIXELBUS_COMFY_ALLOWED_INPUT_FILES"),
            templates_dir=Path(templates) if templates else None,
            include_previews=env_bool(
                environ, "PIXELBUS_COMFY_INCLUDE_PREVIEWS", cls.include_previews
            ),
            max_output_bytes=env_int(
                environ, "PIXELBUS_COMFY_MAX_OUTPUT_BYTES", cls.max_output_bytes, lo=1, hi=1 << 34
            ),
            max_image_bytes=env_int(
                environ, "PIXELBUS_MAX_INPUT_IMAGE_BYTES", cls.max_image_bytes, lo=1024, hi=1 << 30
            ),
            max_image_pixels=env_int(
                environ, "PIXELBUS_MAX_IMAGE_PIXELS", cls.max_image_pixels, lo=1024, hi=1 << 31
            ),
            animated_inputs=animated_inputs_from(environ),
            fetch_timeout_s=env_float(
                environ, "PIXELBUS_FETCH_TIMEOUT_S", cls.fetch_timeout_s, lo=0.1, hi=600
            ),
            ssrf_allow_networks=env_networks(environ, "PIXELBUS_SSRF_ALLOW_NETWORKS"),
            agent=AgentSettings.from_env(environ),
        )

    def redacted(self) -> dict[str, Any]:
        return {
            "bus": self.bus.redacted(),
            "comfyui_urls": list(self.urls),
            "backend_capacity": self.backend_capacity,
            "task_timeout_s": self.task_timeout_s,
            "health_interval_s": self.health_interval_s,
            "progress_delay_s": self.progress_delay_s,
            "allowed_node_types": sorted(self.allowed_node_types)
            if self.allowed_node_types is not None
            else "any",
            "raw_graphs": self.raw_graphs,
            "allowed_input_files": list(self.allowed_input_files),
            "templates_dir": str(self.templates_dir) if self.templates_dir else None,
            "include_previews": self.include_previews,
            "agent_url": self.agent.gateway_url if self.agent else None,
            "agent_token": "***" if self.agent and self.agent.token else None,
        }
