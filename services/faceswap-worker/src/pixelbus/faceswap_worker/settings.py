"""faceswap-worker settings from the environment."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelbus.contracts.validation import FACE_SWAP_MODELS
from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import BusSettings, env_float, env_int, env_str

__all__ = ["FaceSwapSettings"]


@dataclass(frozen=True)
class FaceSwapSettings:
    bus: BusSettings = field(default_factory=BusSettings)
    concurrency: int = 2
    default_model: str = "builtin"
    max_image_bytes: int = 15 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    fetch_timeout_s: float = 20.0
    ssrf_allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FaceSwapSettings:
        default_model = env_str(environ, "PIXELBUS_FACESWAP_DEFAULT_MODEL", cls.default_model)
        if default_model not in FACE_SWAP_MODELS:
            raise SettingsError(
                f"PIXELBUS_FACESWAP_DEFAULT_MODEL={default_model!r} is not one of "
                f"{', '.join(FACE_SWAP_MODELS)}"
            )
        networks: list[IPNetwork] = []
        for raw in environ.get("PIXELBUS_SSRF_ALLOW_NETWORKS", "").split(","):
            if raw.strip():
                try:
                    networks.append(ipaddress.ip_network(raw.strip()))
                except ValueError:
                    raise SettingsError(
                        f"PIXELBUS_SSRF_ALLOW_NETWORKS: {raw.strip()!r} is not a network"
                    ) from None
        return cls(
            bus=BusSettings.from_env(environ),
            concurrency=env_int(
                environ, "PIXELBUS_WORKER_CONCURRENCY", cls.concurrency, lo=1, hi=256
            ),
            default_model=default_model,
            max_image_bytes=env_int(
                environ, "PIXELBUS_MAX_INPUT_IMAGE_BYTES", cls.max_image_bytes, lo=1024, hi=1 << 30
            ),
            max_image_pixels=env_int(
                environ, "PIXELBUS_MAX_IMAGE_PIXELS", cls.max_image_pixels, lo=1024, hi=1 << 31
            ),
            fetch_timeout_s=env_float(
                environ, "PIXELBUS_FETCH_TIMEOUT_S", cls.fetch_timeout_s, lo=0.1, hi=600
            ),
            ssrf_allow_networks=tuple(networks),
        )

    def redacted(self) -> dict[str, Any]:
        return {
            "bus": self.bus.redacted(),
            "concurrency": self.concurrency,
            "default_model": self.default_model,
            "max_image_bytes": self.max_image_bytes,
            "max_image_pixels": self.max_image_pixels,
            "fetch_timeout_s": self.fetch_timeout_s,
            "ssrf_allow_networks": [str(n) for n in self.ssrf_allow_networks],
        }
