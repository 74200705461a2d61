"""A face-swap task's options, read from its ``wf_json`` (already validated by the
gateway; checked again here, since tasks may come from anywhere). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from pixelbus.contracts.validation import parse_resolution
from pixelbus.faceswap_worker.engines.base import FACE_ORDERS, SwapOptions

__all__ = ["OUTPUT_FORMATS", "OutputFormat", "OutputOptions", "parse_options"]

OutputFormat: TypeAlias = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: dict[str, tuple[OutputFormat, str, str]] = {
    "png": ("png", "image/png", "result.png"),
    "jpeg": ("jpeg", "image/jpeg", "result.jpg"),
    "jpg": ("jpeg", "image/jpeg", "result.jpg"),
    "webp": ("webp", "image/webp", "result.webp"),
}


@dataclass(frozen=True, slots=True)
class OutputOptions:
    format: OutputFormat = "png"
    quality: int = 92
    resolution: tuple[int, int] | None = None
    """Fit within this box (width, height), keeping the aspect ratio; never enlarge."""

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.format][1]

    @property
    def filename(self) -> str:
        return OUTPUT_FORMATS[self.format][2]


def parse_options(wf: Mapping[str, Any]) -> tuple[SwapOptions, OutputOptions]:
    """Raises ValueError naming the field."""
    swap = SwapOptions(
        source_face_index=_index(wf, "source_face_index"),
        target_face_index=_index(wf, "target_face_index"),
        face_order=_choice(wf, "face_order", FACE_ORDERS, "left-right"),  # type: ignore[arg-type]
        enhancer=_text(wf, "enhancer"),
        enhancer_blend=_number(wf, "enhancer_blend", 0.8),
    )
    name = str(wf.get("output_format") or "png").lower()
    if name not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of png, jpeg, webp, got {name!r}")
    quality = wf.get("quality", 92)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer within 1..100, got {quality!r}")
    resolution = wf.get("resolution")
    size = None
    if resolution is not None:
        if not isinstance(resolution, str):
            raise ValueError("resolution must be a string like 1024x1024")
        try:
            size = parse_resolution(resolution)
        except ValueError as exc:
            raise ValueError(f"resolution {exc}") from None
    return swap, OutputOptions(OUTPUT_FORMATS[name][0], quality, size)


def _index(wf: Mapping[str, Any], field: str) -> int | None:
    value = wf.get(field)
    if value is None or value in ("many", "all"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{field} must be an integer 0 or more (or "many"), got {value!r}')
    return value


def _choice(wf: Mapping[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = wf.get(field) or default
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _text(wf: Mapping[str, Any], field: str) -> str | None:
    value = wf.get(field)
    if value is None or value == "" or value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a model name, got {value!r}")
    return value


def _number(wf: Mapping[str, Any], field: str, default: float) -> float:
    value = wf.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{field} must be a number within 0..1, got {value!r}")
    return float(value)
