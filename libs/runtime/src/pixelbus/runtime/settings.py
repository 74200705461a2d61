"""Bus settings from the environment, validated once at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from pixelbus.contracts.subjects import POOLS
from pixelbus.runtime.errors import SettingsError

__all__ = [
    "BusSettings",
    "env_bool",
    "env_float",
    "env_int",
    "env_networks",
    "env_str",
    "with_secret_files",
]


#: Only our settings are read from files; other ``*_FILE`` variables are left alone.
SECRET_FILE_PREFIXES = ("PIXELBUS_", "R2_", "CLOUDFLARE_", "NATS_", "FACE_SWAP_", "APP_")


def with_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every ``NAME_FILE=/path`` of ours read into ``NAME`` (Kubernetes and Docker
    secrets mounted as files), so that a secret need not sit in the environment. ``NAME``
    set directly as well is a conflict, refused like an unreadable file."""
    expanded = dict(environ)
    for variable, path in environ.items():
        if not variable.endswith("_FILE") or not path.strip():
            continue
        if not variable.startswith(SECRET_FILE_PREFIXES):
            continue  # another program's setting (e.g. TF_CLI_CONFIG_FILE), not ours
        name = variable.removesuffix("_FILE")
        if environ.get(name):
            raise SettingsError(f"{name} and {variable} are both set; keep one")
        try:
            with open(path.strip(), encoding="utf-8") as secret:
                expanded[name] = secret.read().strip()
        except OSError as exc:
            raise SettingsError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None
    return expanded


def env_networks(
    environ: Mapping[str, str], name: str, *, strict: bool = True
) -> tuple[IPv4Network | IPv6Network, ...]:
    """A comma-separated list of CIDR networks (``PIXELBUS_SSRF_ALLOW_NETWORKS``)."""
    networks = []
    for raw in environ.get(name, "").split(","):
        if raw.strip():
            try:
                networks.append(ip_network(raw.strip(), strict=strict))
            except ValueError:
                raise SettingsError(f"{name}: {raw.strip()!r} is not a network") from None
    return tuple(networks)


def env_str(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, "").strip()
    return value or default


def env_int(environ: Mapping[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def env_float(
    environ: Mapping[str, str], name: str, default: float, *, lo: float, hi: float
) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class BusSettings:
    """How services reach NATS and how the JetStream assets are sized.

    Durations in seconds. ``ack_wait_s`` is the lease of every in-cluster consumer (pool
    workers, the uploader, the projector): work in flight keeps it by heartbeating (an
    in-progress ack every third of it), so it is short and a killed process's work comes
    back within it. ``pool_ack_wait_s`` overrides it per pool (``PIXELBUS_ACK_WAIT_S_<POOL>``);
    the ``comfy`` pool's default is longer because external consumers
    (``/api/comm/task/fetch``) draw from it and heartbeat over HTTP.
    ``inline_output_bytes``: a task's outputs travel inline in ``OutputsReady`` up to this
    many bytes in all (a probe's JSON, a thumbnail); larger ones go through the Object
    Store. Kept well under the stream's 1 MiB message limit (base64 adds a third).
    """

    nats_url: str = "nats://127.0.0.1:4222"
    replicas: int = 1
    stream_max_age_s: float = 7 * 24 * 3600
    duplicate_window_s: float = 600
    ack_wait_s: float = 3
    pool_ack_wait_s: tuple[tuple[str, float], ...] = (("comfy", 30.0),)
    max_deliver: int = 5
    retry_delay_s: float = 2
    outputs_ttl_s: float = 24 * 3600
    idempotency_ttl_s: float = 24 * 3600
    progress_interval_s: float = 0.25
    inline_output_bytes: int = 256 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BusSettings:
        return cls(
            nats_url=env_str(environ, "NATS_URL", cls.nats_url),
            replicas=env_int(environ, "PIXELBUS_STREAM_REPLICAS", cls.replicas, lo=1, hi=5),
            stream_max_age_s=env_float(
                environ, "PIXELBUS_STREAM_MAX_AGE_S", cls.stream_max_age_s, lo=60, hi=3.2e7
            ),
            duplicate_window_s=env_float(
                environ, "PIXELBUS_DUPLICATE_WINDOW_S", cls.duplicate_window_s, lo=1, hi=86400
            ),
            ack_wait_s=env_float(environ, "PIXELBUS_ACK_WAIT_S", cls.ack_wait_s, lo=0.5, hi=3600),
            pool_ack_wait_s=_pool_ack_waits(environ),
            max_deliver=env_int(environ, "PIXELBUS_MAX_DELIVER", cls.max_deliver, lo=1, hi=100),
            retry_delay_s=env_float(
                environ, "PIXELBUS_RETRY_DELAY_S", cls.retry_delay_s, lo=0, hi=3600
            ),
            outputs_ttl_s=env_float(
                environ, "PIXELBUS_OUTPUTS_TTL_S", cls.outputs_ttl_s, lo=60, hi=3.2e7
            ),
            idempotency_ttl_s=env_float(
                environ, "PIXELBUS_IDEMPOTENCY_TTL_S", cls.idempotency_ttl_s, lo=60, hi=3.2e7
            ),
            progress_interval_s=env_float(
                environ, "PIXELBUS_PROGRESS_INTERVAL_S", cls.progress_interval_s, lo=0, hi=60
            ),
            inline_output_bytes=env_int(
                environ,
                "PIXELBUS_INLINE_OUTPUT_BYTES",
                cls.inline_output_bytes,
                lo=0,
                hi=512 * 1024,
            ),
        )

    def ack_wait_for(self, pool: str) -> float:
        """The lease of ``pool``'s tasks: its own setting, else ``ack_wait_s``."""
        return dict(self.pool_ack_wait_s).get(pool, self.ack_wait_s)

    def redacted(self) -> dict[str, Any]:
        values = asdict(self)
        values["nats_url"] = _redact_url(self.nats_url)
        return values


def _pool_ack_waits(environ: Mapping[str, str]) -> tuple[tuple[str, float], ...]:
    """``PIXELBUS_ACK_WAIT_S_<POOL>`` for each pool that has one (else the defaults); a pool
    without one follows ``PIXELBUS_ACK_WAIT_S``."""
    defaults = dict(BusSettings.pool_ack_wait_s)
    waits: dict[str, float] = {}
    for pool in POOLS:
        name = f"PIXELBUS_ACK_WAIT_S_{pool.name.upper()}"
        if name in environ or pool.name in defaults:
            default = defaults.get(pool.name, BusSettings.ack_wait_s)
            waits[pool.name] = env_float(environ, name, default, lo=0.5, hi=3600)
    return tuple(sorted(waits.items()))


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
