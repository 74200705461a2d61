"""The face-swap task handler: fetch both images safely, swap, resize, encode; a video
target is handed to the video fan-out (``pixelbus.faceswap_worker.video``).

Errors map onto the runtime's split: bad input (blocked URL, not an image, no face,
unknown or uninstalled model, bad option) is ``Permanent``; a timeout or a 5xx from an
image host or the remote engine is ``Retryable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx
from nats.js.errors import NotFoundError

from pixelbus.contracts.face_swap import VIDEO_OUTPUT_FORMATS
from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX, input_object_names
from pixelbus.faceswap_worker.engines.base import FaceSwapEngine
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog, UnknownModel
from pixelbus.faceswap_worker.engines.errors import EngineError
from pixelbus.faceswap_worker.options import parse_options
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.media.arrays import RGBImage, decode_image, encode_image, fit_within
from pixelbus.media.errors import MediaError
from pixelbus.media.fetch import FetchLimits, fetch_bytes
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.media.video import is_video
from pixelbus.runtime.errors import Permanent
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.worker import OutputFile, TaskContext, TaskResult

if TYPE_CHECKING:
    from pixelbus.faceswap_worker.video import VideoSplitter

__all__ = ["FaceSwapHandler", "resolve_engine"]


class EngineUnknown(EngineError):
    code = "model_not_installed"

    def __init__(self, name: str) -> None:
        super().__init__(f"face enhancer {name!r} is not known on this worker")


def resolve_engine(engines: EngineCatalog, model: str) -> FaceSwapEngine:
    """The engine of ``model`` (loaded on first use); ``Permanent`` when this worker does
    not have it."""
    try:
        return engines.get(model)
    except UnknownModel:
        installed = ", ".join(engines.names()) or "none"
        raise Permanent(
            "model_not_installed",
            f"model {model!r} is not available on this worker (available: {installed}); "
            "install it or omit `model` to use the worker's default",
        ) from None


class FaceSwapHandler:
    def __init__(
        self,
        engines: Mapping[str, FaceSwapEngine] | EngineCatalog,
        settings: FaceSwapSettings,
        objects: ObjectReader,
        http: httpx.AsyncClient | None = None,
        video: VideoSplitter | None = None,
    ) -> None:
        """``video``: splits video targets across the workers (without it they are
        refused)."""
        self._engines = (
            engines if isinstance(engines, EngineCatalog) else EngineCatalog(fixed=engines)
        )
        self._settings = settings
        self._objects = objects
        self._http = http
        self._limits = FetchLimits(
            max_bytes=settings.max_image_bytes, timeout_s=settings.fetch_timeout_s
        )
        # a target may be a video: fetched up to the video limit, an image then judged by
        # the image limit as it is decoded
        self._target_limits = FetchLimits(
            max_bytes=max(settings.max_image_bytes, settings.video.max_bytes),
            timeout_s=settings.fetch_timeout_s,
        )
        self._video = video
        self._policy = SsrfPolicy(allow_networks=settings.ssrf_allow_networks)

    async def __call__(self, ctx: TaskContext) -> TaskResult:
        wf = ctx.wf_json
        model = wf.get("model") or self._settings.default_model
        try:
            swap_options, output = parse_options(wf)
        except ValueError as exc:
            raise Permanent("invalid_input", str(exc)) from exc
        engine = await asyncio.to_thread(resolve_engine, self._engines, str(model))
        if swap_options.enhancer is not None:
            await asyncio.to_thread(self._enhancer_check, swap_options.enhancer)
        await ctx.progress(0.05, node="fetch", message="fetching images")
        (source_bytes, source_type), (target_bytes, target_type) = await asyncio.gather(
            self._fetch(wf.get("source_url"), "source_url", self._limits),
            self._fetch(wf.get("target_url"), "target_url", self._target_limits),
        )
        if is_video(target_bytes):
            if self._video is None:
                raise Permanent("invalid_input", "target_url: video targets are not served here")
            await self._image(source_bytes, source_type, "source_url")  # checked before the split
            return await self._video.split(
                ctx,
                source=source_bytes,
                target=target_bytes,
                output=output,
                model=str(model),
                input_objects=input_object_names(ctx.input_data),
            )
        if output.asked in VIDEO_OUTPUT_FORMATS:
            raise Permanent(
                "invalid_input",
                f"output_format {output.asked!r} is for video targets; the target is an "
                "image: png, jpeg or webp",
            )
        source, target = await asyncio.gather(
            self._image(source_bytes, source_type, "source_url"),
            self._image(target_bytes, target_type, "target_url"),
        )
        await ctx.progress(0.4, node="swap", message=f"swapping faces ({engine.name})")
        swapped = await asyncio.to_thread(engine.swap, source, target, swap_options)
        if output.resolution is not None:
            swapped = fit_within(swapped, *output.resolution)
        await ctx.progress(0.9, node="encode", message="encoding result")
        data = await asyncio.to_thread(encode_image, swapped, output.format, output.quality)
        height, width = swapped.shape[:2]
        return TaskResult(
            outputs=[OutputFile(output.filename, data, output.content_type)],
            result={
                "width": width,
                "height": height,
                "model": engine.name,
                "format": output.format,
            },
        )

    def _enhancer_check(self, name: str) -> None:
        try:
            self._engines.enhancer(name)
        except UnknownModel:
            raise EngineUnknown(name) from None

    async def _image(self, data: bytes, content_type: str | None, field: str) -> RGBImage:
        try:
            return await asyncio.to_thread(
                decode_image,
                data,
                max_bytes=self._settings.max_image_bytes,
                max_pixels=self._settings.max_image_pixels,
                content_type=content_type,
                animated=self._settings.animated_inputs,
            )
        except MediaError as exc:
            exc.about(field)
            raise

    async def _fetch(
        self, url: object, field: str, limits: FetchLimits
    ) -> tuple[bytes, str | None]:
        if not isinstance(url, str) or not url:
            raise Permanent("invalid_input", f"{field} is required")
        if url.startswith(INPUT_OBJECT_PREFIX):
            try:
                data = await self._objects.read(url.removeprefix(INPUT_OBJECT_PREFIX))
            except NotFoundError as exc:
                raise Permanent(
                    "input_missing", f"{field}: the uploaded image has expired"
                ) from exc
            return data, None
        try:
            fetched = await fetch_bytes(url, limits=limits, policy=self._policy, client=self._http)
        except MediaError as exc:
            exc.about(field)
            raise
        return fetched.data, fetched.content_type
