"""faceswap-worker settings from the environment (the model settings are also read by
``pixelbus models``)."""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pixelbus.contracts.face_swap import FACE_SWAP_MODELS
from pixelbus.media.images import AnimatedInputs, animated_inputs_from
from pixelbus.runtime.settings import (
    BusSettings,
    Networks,
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

__all__ = ["FaceSwapSettings", "ModelSettings", "RemoteSettings", "VideoSettings"]


@dataclass(frozen=True)
class ModelSettings(Settings):
    directory: Path = setting("PIXELBUS_MODELS_DIR", Path(".pixelbus/models"), path)
    """where the face-swap models are (`pixelbus models list`)"""
    manifest: Path | None = setting("PIXELBUS_MODELS_MANIFEST", None, path)
    """JSON file of model pins (sha256, size) added to the registry"""
    base_url: str | None = setting("PIXELBUS_MODELS_BASE_URL", None, http_url)
    """where `pixelbus models pull` downloads from (your mirror; no default)"""
    providers: str = setting("PIXELBUS_ONNX_PROVIDERS", "auto")
    """onnxruntime execution providers: `auto` (CUDA when present, else CPU), or a list such as
    `cuda,cpu`"""
    detect_size: int = setting("PIXELBUS_FACE_DETECT_SIZE", 640, integer(128, 2048))
    """SCRFD input size"""
    detect_threshold: float = setting("PIXELBUS_FACE_DETECT_THRESHOLD", 0.5, number(0.05, 0.99))
    """SCRFD score threshold"""


@dataclass(frozen=True)
class RemoteSettings(Settings):
    """The seed's external face-swap service (``FACE_SWAP_API_URL``)."""

    url: str | None = setting("FACE_SWAP_API_URL", None, http_url, show=without_credentials)
    """the external face-swap service (enables `model: remote`)"""
    timeout_s: float = setting("FACE_SWAP_TIMEOUT", 120.0, number(0.05, 3600))
    """its per-call timeout (s)"""
    retry_count: int = setting("FACE_SWAP_RETRY_COUNT", 3, integer(0, 20))
    """its retries on timeouts and 5xx"""
    backoff_s: float = setting("PIXELBUS_FACE_SWAP_BACKOFF_S", 1.0, number(0.0, 600))
    """its first backoff (s, doubling)"""


@dataclass(frozen=True)
class VideoSettings(Settings):
    """Video targets: their limits, and how they are split across workers."""

    max_bytes: int = setting("PIXELBUS_VIDEO_MAX_BYTES", 200 << 20, integer(1024, 1 << 34))
    """largest target video"""
    max_duration_s: float = setting("PIXELBUS_VIDEO_MAX_DURATION_S", 120.0, number(0.1, 86400))
    """longest target video (s)"""
    max_frames: int = setting("PIXELBUS_VIDEO_MAX_FRAMES", 7200, integer(1, 10**7))
    """most frames in a target video"""
    max_pixels: int = setting(
        "PIXELBUS_VIDEO_MAX_PIXELS", 1920 * 1080, integer(64, 1 << 27), default_doc="1080p"
    )
    """largest frame of a target video (width x height)"""
    chunk_s: float = setting("PIXELBUS_VIDEO_CHUNK_S", 2.0, number(0.1, 600))
    """seconds of frames in one chunk that one worker swaps"""
    chunk_concurrency: int = setting("PIXELBUS_VIDEO_CHUNK_CONCURRENCY", 1, integer(1, 64))
    """video chunks a worker swaps at once (each keeps a core busy)"""
    progress_interval_s: float = setting(
        "PIXELBUS_VIDEO_PROGRESS_INTERVAL_S", 1.0, number(0.05, 60)
    )
    """how often a chunk being swapped reports its frames so far (each report costs the
    swap a few ms: 0.25 s made a 10 s 720p video 7% slower on 2 cores, 1 s 2%)"""


@dataclass(frozen=True)
class FaceSwapSettings(Settings):
    bus: BusSettings = section(BusSettings)
    concurrency: int = setting("PIXELBUS_WORKER_CONCURRENCY", 2, integer(1, 256))
    """tasks a face-swap worker runs at once"""
    default_model: str = setting(
        "PIXELBUS_FACESWAP_DEFAULT_MODEL", "builtin", one_of(*FACE_SWAP_MODELS)
    )
    """engine used when a task names no `model`; must be installed, or the worker does not start"""
    max_image_bytes: int = setting(
        "PIXELBUS_MAX_INPUT_IMAGE_BYTES", 15 << 20, integer(1024, 1 << 30)
    )
    """largest input image"""
    max_image_pixels: int = setting(
        "PIXELBUS_MAX_IMAGE_PIXELS", 40_000_000, integer(1024, 1 << 31), default_doc="40 Mpx"
    )
    """largest input image in pixels"""
    fetch_timeout_s: float = setting("PIXELBUS_FETCH_TIMEOUT_S", 20.0, number(0.1, 600))
    """timeout of an input image fetch"""
    ssrf_allow_networks: Networks = setting("PIXELBUS_SSRF_ALLOW_NETWORKS", (), networks())
    """CIDRs the SSRF guard lets image fetches reach (development only)"""
    animated_inputs: AnimatedInputs = setting(
        "PIXELBUS_ANIMATED_INPUTS",
        "first_frame",
        lambda name, raw: animated_inputs_from({name: raw}),
    )
    """an animated input image: `first_frame` (use it) or `refuse`"""
    models: ModelSettings = section(ModelSettings)
    remote: RemoteSettings = section(RemoteSettings)
    video: VideoSettings = section(VideoSettings)

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        if reader.get("PIXELBUS_FACESWAP_DEFAULT_MODEL") == "remote" and not reader.get(
            "FACE_SWAP_API_URL"
        ):
            reader.refuse(
                "PIXELBUS_FACESWAP_DEFAULT_MODEL",
                "PIXELBUS_FACESWAP_DEFAULT_MODEL=remote needs FACE_SWAP_API_URL to be set",
            )
        return reader.fields(cls)
