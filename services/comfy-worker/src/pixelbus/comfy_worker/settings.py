"""comfy-worker settings from the environment, validated once at start.

``COMFYUI_URL`` (the seed's name) lists one or more ComfyUI servers, comma-separated.
Remote agent mode is on when ``PIXELBUS_COMFY_AGENT_URL`` names a gateway: the worker
then takes tasks over HTTP and needs no NATS.
"""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from pixelbus.media.images import AnimatedInputs, animated_inputs_from
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import (
    REQUIRED,
    BusSettings,
    Networks,
    Reader,
    Settings,
    boolean,
    integer,
    networks,
    number,
    section,
    setting,
    words,
)

__all__ = ["AgentSettings", "ComfySettings", "parse_urls"]

DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"


def parse_urls(name: str, raw: str) -> tuple[str, ...]:
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


def _first_url(name: str, raw: str) -> str:
    return parse_urls(name, raw)[0]


def _node_types(name: str, raw: str) -> frozenset[str] | None:
    return frozenset(words(name, raw)) or None


def _directory(name: str, raw: str) -> Path:
    if not Path(raw).is_dir():
        raise SettingsError(f"{name}={raw!r} is not a directory")
    return Path(raw)


@dataclass(frozen=True)
class AgentSettings(Settings):
    """Remote agent mode: tasks come from a gateway's ``/api/comm/task/*`` endpoints."""

    gateway_url: str = setting("PIXELBUS_COMFY_AGENT_URL", REQUIRED, _first_url)
    """remote agent mode: the gateway to lease tasks from (no NATS then)"""
    name: str = setting("PIXELBUS_COMFY_AGENT_NAME", "comfy-agent")
    """the agent's consumer name"""
    poll_wait_s: float = setting("PIXELBUS_COMFY_AGENT_POLL_S", 10.0, number(0, 60))
    """the agent's long-poll wait"""
    heartbeat_s: float = setting("PIXELBUS_COMFY_AGENT_HEARTBEAT_S", 5.0, number(0.05, 600))
    """the agent's progress heartbeat"""
    token: str | None = setting("PIXELBUS_COMFY_AGENT_TOKEN", None, secret=True)
    """a bearer token the agent sends to the gateway"""


@dataclass(frozen=True)
class ComfySettings(Settings):
    bus: BusSettings = section(BusSettings)
    urls: tuple[str, ...] = setting("COMFYUI_URL", (DEFAULT_COMFYUI_URL,), parse_urls)
    """the ComfyUI servers of the comfy-worker, comma-separated"""
    backend_capacity: int = setting("PIXELBUS_COMFY_BACKEND_CAPACITY", 2, integer(1, 64))
    """prompts a worker keeps on one ComfyUI server at once, running and queued there (its
    concurrency is this times the servers)"""
    task_timeout_s: float = setting("PIXELBUS_COMFY_TASK_TIMEOUT_S", 600.0, number(0.5, 86400))
    """longest run of a workflow; a stored workflow's `timeout_s` overrides it"""
    http_timeout_s: float = setting("PIXELBUS_COMFY_HTTP_TIMEOUT_S", 30.0, number(0.5, 600))
    """HTTP timeout of ComfyUI calls"""
    health_interval_s: float = setting("PIXELBUS_COMFY_HEALTH_INTERVAL_S", 5.0, number(0.05, 600))
    """how often each ComfyUI server's health is checked"""
    reconnect_s: float = setting("PIXELBUS_COMFY_RECONNECT_S", 10.0, number(0.1, 600))
    """how long a run waits for its server to come back before giving the task back"""
    poll_interval_s: float = setting("PIXELBUS_COMFY_POLL_INTERVAL_S", 5.0, number(0.1, 600))
    """a safety net beside the WebSocket: `/history` is asked this often while waiting"""
    progress_delay_s: float = setting("PIXELBUS_COMFY_PROGRESS_DELAY_S", 0.25, number(0, 600))
    """a ComfyUI task reports no progress before it has run this long (a quicker one reports
    none: its completion follows at once)"""
    allowed_node_types: frozenset[str] | None = setting(
        "PIXELBUS_COMFY_ALLOWED_NODE_TYPES", None, _node_types, default_doc="empty: any"
    )
    """node types a raw graph may use (comma-separated)"""
    raw_graphs: bool = setting("PIXELBUS_COMFY_RAW_GRAPHS", True, boolean)
    """`false`: only stored workflows"""
    allowed_input_files: tuple[str, ...] = setting(
        "PIXELBUS_COMFY_ALLOWED_INPUT_FILES", (), words, default_doc="empty: none"
    )
    """glob patterns of server-side files `LoadImage` may name"""
    templates_dir: Path | None = setting("PIXELBUS_COMFY_TEMPLATES_DIR", None, _directory)
    """more stored workflows (`<name>.json`)"""
    include_previews: bool = setting("PIXELBUS_COMFY_INCLUDE_PREVIEWS", False, boolean)
    """also store `PreviewImage` temp outputs"""
    max_output_bytes: int = setting(
        "PIXELBUS_COMFY_MAX_OUTPUT_BYTES", 512 << 20, integer(1, 1 << 34)
    )
    """largest output file read from ComfyUI"""
    max_image_bytes: int = setting(
        "PIXELBUS_MAX_INPUT_IMAGE_BYTES", 15 << 20, integer(1024, 1 << 30)
    )
    """largest input image"""
    max_image_pixels: int = setting(
        "PIXELBUS_MAX_IMAGE_PIXELS", 40_000_000, integer(1024, 1 << 31), default_doc="40 Mpx"
    )
    """largest input image in pixels"""
    animated_inputs: AnimatedInputs = setting(
        "PIXELBUS_ANIMATED_INPUTS",
        "first_frame",
        lambda name, raw: animated_inputs_from({name: raw}),
    )
    """an animated input image: `first_frame` (use it) or `refuse`"""
    fetch_timeout_s: float = setting("PIXELBUS_FETCH_TIMEOUT_S", 20.0, number(0.1, 600))
    """timeout of an input image fetch"""
    ssrf_allow_networks: Networks = setting("PIXELBUS_SSRF_ALLOW_NETWORKS", (), networks())
    """CIDRs the SSRF guard lets image fetches reach (development only)"""
    agent: AgentSettings | None = section(AgentSettings, when="PIXELBUS_COMFY_AGENT_URL")

    @property
    def concurrency(self) -> int:
        return self.backend_capacity * len(self.urls)

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        raw_graphs = reader.get("PIXELBUS_COMFY_RAW_GRAPHS") or "true"
        if (
            reader.get("APP_ENV") == "production"
            and raw_graphs.lower() in ("1", "true", "yes", "on")
            and not reader.get("PIXELBUS_COMFY_ALLOWED_NODE_TYPES")
        ):
            reader.refuse(
                "PIXELBUS_COMFY_RAW_GRAPHS",
                "APP_ENV=production: raw ComfyUI graphs need PIXELBUS_COMFY_ALLOWED_NODE_TYPES "
                "(the node types clients may use), or PIXELBUS_COMFY_RAW_GRAPHS=false "
                "(stored workflows only)",
            )
        return reader.fields(cls)
