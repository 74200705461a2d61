"""faceswap-worker settings from the environment (the model settings are also read by
``pixelbus models``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelbus.contracts.validation import FACE_SWAP_MODELS
from pixelbus.media.images import AnimatedInputs, animated_inputs_from
from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import BusSettings, env_float, env_int, env_networks, env_str

__all__ = ["FaceSwapSettings", "ModelSettings", "RemoteSettings"]


@dataclass(frozen=True)
class ModelSettings:
    directory: Path = Path(".pixelbus/models")
    manifest: Path | None = None
    base_url: str | None = None
    """Where ``pixelbus models pull`` downloads from (no default: the operator's mirror)."""
    providers: str = "auto"
    """onnxruntime execution providers: ``auto`` (CUDA when present, then CPU) or a list."""
    detect_size: int = 640
    detect_threshold: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ModelSettings:
        manifest = environ.get("PIXELBUS_MODELS_MANIFEST", "").strip()
        base_url = environ.get("PIXELBUS_MODELS_BASE_URL", "").strip() or None
        if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
            raise SettingsError(f"PIXELBUS_MODELS_BASE_URL={base_url!r} is not an http(s) URL")
        return cls(
            directory=Path(env_str(environ, "PIXELBUS_MODELS_DIR", str(cls.directory))),
            manifest=Path(manifest) if manifest else None,
            base_url=base_url,
            providers=env_str(environ, "PIXELBUS_ONNX_PROVIDERS", cls.providers),
            detect_size=env_int(
                environ, "PIXELBUS_FACE_DETECT_SIZE", cls.detect_size, lo=128, hi=2048
            ),
            detect_threshold=env_float(
                environ, "PIXELBUS_FACE_DETECT_THRESHOLD", cls.detect_threshold, lo=0.05, hi=0.99
            ),
        )


@dataclass(frozen=True)
class RemoteSettings:
    """The seed's external face-swap service (``FACE_SWAP_API_URL``)."""

    url: str | None = None
    timeout_s: float = 120.0
    retry_count: int = 3
    backoff_s: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RemoteSettings:
        url = environ.get("FACE_SWAP_API_URL", "").strip() or None
        if url is not None and not url.lower().startswith(("http://", "https://")):
            raise SettingsError(f"FACE_SWAP_API_URL={url!r} is not an http(s) URL")
        return cls(
            url=url,
            timeout_s=env_float(environ, "FACE_SWAP_TIMEOUT", cls.timeout_s, lo=0.05, hi=3600),
            retry_count=env_int(environ, "FACE_SWAP_RETRY_COUNT", cls.retry_count, lo=0, hi=20),
            backoff_s=env_float(
                environ, "PIXELBUS_FACE_SWAP_BACKOFF_S", cls.backoff_s, lo=0.0, hi=600
            ),
        )


@dataclass(frozen=True)
class FaceSwapSettings:
    bus: BusSettings = field(default_factory=BusSettings)
    concurrency: int = 2
    default_model: str = "builtin"
    max_image_bytes: int = 15 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    fetch_timeout_s: float = 20.0
    ssrf_allow_networks: tuple[IPNetwork, ...] = ()
    animated_inputs: AnimatedInputs = "first_frame"
    models: ModelSettings = field(default_factory=ModelSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FaceSwapSettings:
        default_model = env_str(environ, "PIXELBUS_FACESWAP_DEFAULT_MODEL", cls.default_model)
        if default_model not in FACE_SWAP_MODELS:
            raise SettingsError(
                f"PIXELBUS_FACESWAP_DEFAULT_MODEL={default_model!r} is not one of "
                f"{', '.join(FACE_SWAP_MODELS)}"
            )
        remote = RemoteSettings.from_env(environ)
        if default_model == "remote" and remote.url is None:
            raise SettingsError(
                "PIXELBUS_FACESWAP_DEFAULT_MODEL=remote needs FACE_SWAP_API_URL to be set"
            )
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
            ssrf_allow_networks=env_networks(environ, "PIXELBUS_SSRF_ALLOW_NETWORKS"),
            animated_inputs=animated_inputs_from(environ),
            models=ModelSettings.from_env(environ),
            remote=remote,
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
            "models_dir": str(self.models.directory),
            "models_manifest": str(self.models.manifest) if self.models.manifest else None,
            "onnx_providers": self.models.providers,
            "face_detect_size": self.models.detect_size,
            "face_swap_api_url": _without_credentials(self.remote.url),
            "face_swap_timeout": self.remote.timeout_s,
            "face_swap_retry_count": self.remote.retry_count,
        }


def _without_credentials(url: str | None) -> str | None:
    """``url`` with any user:password@ replaced, for logs."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
