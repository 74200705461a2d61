"""The face-swap options of ``wf_json`` (and of ``POST /api/face-swap/process``), typed
once: each field's type carries its constraint (``msgspec.Meta``) and the description that
both the 422 answer and the worker's failure message quote. The gateway checks requests
with it, the worker checks tasks with it again (tasks may be published by anyone). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias, get_args, get_type_hints

import msgspec
from msgspec import Meta

__all__ = [
    "FACE_ENHANCERS",
    "FACE_ORDERS",
    "FACE_SWAP_MODELS",
    "MAX_FACE_INDEX",
    "MAX_SIDE",
    "MIN_SIDE",
    "OUTPUT_FORMATS",
    "VIDEO_OUTPUT_FORMATS",
    "FaceOrder",
    "FaceSwapModel",
    "FaceSwapOptions",
    "check_face_swap_options",
    "parse_resolution",
]

#: ``builtin`` is the offline landmark engine; ``remote`` the external service at
#: ``FACE_SWAP_API_URL``.
FaceSwapModel: TypeAlias = Literal["builtin", "inswapper_128", "inswapper_128_fp16", "remote"]
FACE_SWAP_MODELS: tuple[FaceSwapModel, ...] = get_args(FaceSwapModel)
FaceEnhancer: TypeAlias = Literal["gfpgan_1.4"]
FACE_ENHANCERS: tuple[FaceEnhancer, ...] = get_args(FaceEnhancer)
#: How faces are numbered for ``source_face_index`` / ``target_face_index``.
FaceOrder: TypeAlias = Literal[
    "left-right", "right-left", "top-bottom", "bottom-top", "large-small", "small-large"
]
FACE_ORDERS: tuple[FaceOrder, ...] = get_args(FaceOrder)
#: ``output_format`` values after normalisation (``jpg`` and any case are accepted).
OUTPUT_FORMATS = ("png", "jpeg", "webp")
#: ``output_format`` values of a video target.
VIDEO_OUTPUT_FORMATS = ("mp4", "webm")
MAX_FACE_INDEX = 1000
MIN_SIDE = 16
MAX_SIDE = 8192
_RESOLUTION = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")

FaceIndex: TypeAlias = Annotated[int, Meta(ge=0, le=MAX_FACE_INDEX)]


class FaceSwapOptions(msgspec.Struct, kw_only=True, frozen=True):
    """Every field is optional here; the two image URLs are required by the gateway's
    validation (which also judges their scheme and length)."""

    source_url: Annotated[
        str | None,
        Meta(description="the image with the face to use: an http(s) URL or a data: URI"),
    ] = None
    target_url: Annotated[
        str | None,
        Meta(description="the image whose faces are replaced: an http(s) URL or a data: URI"),
    ] = None
    resolution: Annotated[
        Annotated[str, Meta(pattern=_RESOLUTION.pattern)] | None,
        Meta(
            description=f"a box WIDTHxHEIGHT the output fits in, each side {MIN_SIDE} to "
            f"{MAX_SIDE} pixels, e.g. 1024x1024"
        ),
    ] = None
    model: Annotated[
        FaceSwapModel | None, Meta(description=f"one of {', '.join(FACE_SWAP_MODELS)}")
    ] = None
    source_face_index: Annotated[
        FaceIndex | None,
        Meta(
            description=f"an integer 0 to {MAX_FACE_INDEX}: which source face (in face_order) "
            "to use; default: the largest"
        ),
    ] = None
    target_face_index: Annotated[
        FaceIndex | Literal["many"] | None,
        Meta(
            description=f"an integer 0 to {MAX_FACE_INDEX} (which target face, in face_order) "
            'or "many" (every face, the default)'
        ),
    ] = None
    face_order: Annotated[
        FaceOrder | None,
        Meta(description=f"one of {', '.join(FACE_ORDERS)} (default left-right)"),
    ] = None
    output_format: Annotated[
        Annotated[str, Meta(pattern="(?i)^(png|jpe?g|webp|mp4|webm)$")] | None,
        Meta(
            description="for an image target png (the default), jpeg (or jpg) or webp; for a "
            "video target mp4 (H.264, the default) or webm (VP9)"
        ),
    ] = None
    quality: Annotated[
        Annotated[int, Meta(ge=1, le=100)] | None,
        Meta(description="an integer between 1 and 100 (jpeg and webp; default 92)"),
    ] = None
    enhancer: Annotated[
        FaceEnhancer | None,
        Meta(description=f"one of {', '.join(FACE_ENHANCERS)}: an enhancer for each swapped face"),
    ] = None
    enhancer_blend: Annotated[
        Annotated[float, Meta(ge=0, le=1)] | None,
        Meta(
            description="a number between 0 and 1: how much the enhanced face shows (default 0.8)"
        ),
    ] = None

    @property
    def size(self) -> tuple[int, int] | None:
        """``resolution`` as (width, height)."""
        return None if self.resolution is None else parse_resolution(self.resolution)


_FIELD_TYPES: dict[str, Any] = get_type_hints(FaceSwapOptions, include_extras=True)
_DESCRIPTIONS: dict[str, str] = {
    name: next(str(m.description) for m in hint.__metadata__ if isinstance(m, Meta))
    for name, hint in _FIELD_TYPES.items()
}


def parse_resolution(value: str) -> tuple[int, int]:
    """``"1024x768"`` → ``(1024, 768)``; raises ``ValueError`` with a reason."""
    match = _RESOLUTION.match(value)
    if not match:
        raise ValueError("must look like WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"each side must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    return width, height


def _normalise(name: str, value: Any) -> Any:
    """The canonical form of a value that passed its type (raises ``ValueError``)."""
    if value is None:
        return None
    if name == "output_format":
        lowered = value.lower()
        return "jpeg" if lowered == "jpg" else lowered
    if name == "resolution":
        width, height = parse_resolution(value)
        return f"{width}x{height}"
    return value


def check_face_swap_options(
    fields: Mapping[str, Any],
) -> tuple[FaceSwapOptions, dict[str, str]]:
    """The options in ``fields`` (other keys are ignored), normalised, and for each field
    that breaks its constraint what it must be. Every field is judged, not only the first
    bad one, so that one answer names them all."""
    good: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, hint in _FIELD_TYPES.items():
        if name not in fields:
            continue
        try:
            good[name] = _normalise(name, msgspec.convert(fields[name], type=hint))
        except (msgspec.ValidationError, ValueError):
            errors[name] = f"must be {_DESCRIPTIONS[name]}"
    return FaceSwapOptions(**good), errors
