"""faceswap-worker settings from the environment (the model settings are also read by
``pixelbus models``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pixelbus.contracts.validation import FACE_SWAP_MODELS
from pixelbus.media.images import AnimatedInputs, animated_inputs_from
from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.settings import (
    BusSettings,
    Reader,
    Settings,
    http_url,
    integer,
    networks,
    number,
    one_of,
    path,
    section,
    setting,
    without_credentials,
)

__all__ = ["FaceSwapSettings", "ModelSettings", "RemoteSettings"]


def _animated_inputs(name: str, raw: str) -> AnimatedInputs:
    return animated_inputs_from({name: raw})


@dataclass(frozen=True)
class ModelSettings(Settings):
    directory: Path = setting(  # noqa: RUF009
        "PIXELBUS_MODELS_DIR",
        Path(".pixelbus/models"),
        "where the face-swap models are (`pixelbus models list`)",
        parse=path,
    )
    manifest: Path | None = setting(  # noqa: RUF009
        "PIXELBUS_MODELS_MANIFEST",
        None,
        "JSON file of model pins (sha256, size) added to the registry",
        parse=path,
    )
    base_url: str | None = setting(
        "PIXELBUS_MODELS_BASE_URL",
        None,
        "where `pixelbus models pull` downloads from (your mirror; no default)",
        parse=http_url,
    )
    providers: str = setting(
        "PIXELBUS_ONNX_PROVIDERS",
        "auto",
        "onnxruntime execution providers: `auto` (CUDA when present, else CPU), or a list "
        "such as `cuda,cpu`",
    )
    detect_size: int = setting(
        "PIXELBUS_FACE_DETECT_SIZE", 640, "SCRFD input size", parse=integer(128, 2048)
    )
    detect_threshold: float = setting(
        "PIXELBUS_FACE_DETECT_THRESHOLD", 0.5, "SCRFD score threshold", parse=number(0.05, 0.99)
    )


@dataclass(frozen=True)
class RemoteSettings(Settings):
    """The seed's external face-swap service (``FACE_SWAP_API_URL``)."""

    url: str | None = setting(
        "FACE_SWAP_API_URL",
        None,
        "the external face-swap service (enables `model: remote`)",
        parse=http_url,
        show=without_credentials,
    )
    timeout_s: float = setting(
        "FACE_SWAP_TIMEOUT", 120.0, "its per-call timeout (s)", parse=number(0.05, 3600)
    )
    retry_count: int = setting(
        "FACE_SWAP_RETRY_COUNT", 3, "its retries on timeouts and 5xx", parse=integer(0, 20)
    )
    backoff_s: float = setting(
        "PIXELBUS_FACE_SWAP_BACKOFF_S",
        1.0,
        "its first backoff (s, doubling)",
        parse=number(0.0, 600),
    )


@dataclass(frozen=True)
class FaceSwapSettings(Settings):
    bus: BusSettings = section(BusSettings)  # noqa: RUF009
    concurrency: int = setting(
        "PIXELBUS_WORKER_CONCURRENCY",
        2,
        "tasks a face-swap worker runs at once",
        parse=integer(1, 256),
    )
    default_model: str = setting(
        "PIXELBUS_FACESWAP_DEFAULT_MODEL",
        "builtin",
        "engine used when a task names no `model`; must be installed, or the worker does not start",
        parse=one_of(*FACE_SWAP_MODELS),
    )
    max_image_bytes: int = setting(
        "PIXELBUS_MAX_INPUT_IMAGE_BYTES",
        15 * 1024 * 1024,
        "largest input image",
        parse=integer(1024, 1 << 30),
        default_doc="15 MiB",
    )
    max_image_pixels: int = setting(
        "PIXELBUS_MAX_IMAGE_PIXELS",
        40_000_000,
        "largest input image in pixels",
        parse=integer(1024, 1 << 31),
        default_doc="40 Mpx",
    )
    fetch_timeout_s: float = setting(
        "PIXELBUS_FETCH_TIMEOUT_S", 20.0, "timeout of an input image fetch", parse=number(0.1, 600)
    )
    ssrf_allow_networks: tuple[IPNetwork, ...] = setting(
        "PIXELBUS_SSRF_ALLOW_NETWORKS",
        (),
        "CIDRs the SSRF guard lets image fetches reach (development only)",
        parse=networks(),
    )
    animated_inputs: AnimatedInputs = setting(  # noqa: RUF009
        "PIXELBUS_ANIMATED_INPUTS",
        "first_frame",
        "an animated input image: `first_frame` (use it) or `refuse`",
        parse=_animated_inputs,
    )
    models: ModelSettings = section(ModelSettings)  # noqa: RUF009
    remote: RemoteSettings = section(RemoteSettings)  # noqa: RUF009

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        if reader.get("PIXELBUS_FACESWAP_DEFAULT_MODEL") == "remote" and not reader.get(
            "FACE_SWAP_API_URL"
        ):
            reader.invalid.append(
                (
                    "PIXELBUS_FACESWAP_DEFAULT_MODEL",
                    "PIXELBUS_FACESWAP_DEFAULT_MODEL=remote needs FACE_SWAP_API_URL to be set",
                )
            )
        return reader.fields(cls)
