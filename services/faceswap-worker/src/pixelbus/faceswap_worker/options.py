"""A face-swap task's options, read from its ``wf_json`` with the contract's typed
options (the gateway checked them already; they are checked again here, since tasks may
be published by anyone). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from pixelbus.contracts.face_swap import check_face_swap_options
from pixelbus.faceswap_worker.engines.base import SwapOptions

__all__ = ["OUTPUT_FORMATS", "OutputFormat", "OutputOptions", "VideoFormat", "parse_options"]

OutputFormat: TypeAlias = Literal["png", "jpeg", "webp"]
#: Each (normalised) ``output_format``: its content type and file name.
OUTPUT_FORMATS: dict[OutputFormat, tuple[str, str]] = {
    "png": ("image/png", "result.png"),
    "jpeg": ("image/jpeg", "result.jpg"),
    "webp": ("image/webp", "result.webp"),
}


VideoFormat: TypeAlias = Literal["mp4", "webm"]


@dataclass(frozen=True, slots=True)
class OutputOptions:
    format: OutputFormat = "png"
    quality: int = 92
    resolution: tuple[int, int] | None = None
    """Fit within this box (width, height), keeping the aspect ratio; never enlarge."""
    video_format: VideoFormat = "mp4"
    """The format of a video target's output."""
    asked: str | None = None
    """The ``output_format`` the task named, if any (to refuse one of the wrong kind)."""

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.format][0]

    @property
    def filename(self) -> str:
        return OUTPUT_FORMATS[self.format][1]


def parse_options(wf: Mapping[str, Any]) -> tuple[SwapOptions, OutputOptions]:
    """Raises ValueError naming each bad field."""
    options, errors = check_face_swap_options(wf)
    if errors:
        raise ValueError("; ".join(f"{name} {message}" for name, message in errors.items()))
    target = options.target_face_index
    swap = SwapOptions(
        source_face_index=options.source_face_index,
        target_face_index=None if target == "many" else target,
        face_order=options.face_order or "left-right",
        enhancer=options.enhancer,
        enhancer_blend=0.8 if options.enhancer_blend is None else options.enhancer_blend,
    )
    asked = options.output_format
    image: OutputFormat = asked if asked in OUTPUT_FORMATS else "png"
    video: VideoFormat = "webm" if asked == "webm" else "mp4"
    output = OutputOptions(image, options.quality or 92, options.size, video, asked)
    return swap, output
