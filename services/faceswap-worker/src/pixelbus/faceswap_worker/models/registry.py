"""The models pixelbus knows: file name, expected sha256 and size, input/output signature
and licence. Pins that are not known here (``sha256=None``) can be supplied by a manifest
file (``PIXELBUS_MODELS_MANIFEST``), which may also add models or replace pins."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeAlias, get_args

__all__ = ["ENGINE_FILES", "KNOWN_MODELS", "ModelSpec", "Role", "TensorSpec", "load_registry"]

Role: TypeAlias = Literal["detector", "recogniser", "swapper", "enhancer"]
_ROLES: tuple[Role, ...] = get_args(Role)

_INSIGHTFACE_LICENCE = (
    "InsightFace pretrained models: non-commercial research use only "
    "(see the InsightFace project's licence)"
)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    filename: str
    role: Role
    sha256: str | None
    size: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    licence: str

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


_SWAPPER_IO = (
    (TensorSpec("target", (1, 3, 128, 128)), TensorSpec("source", (1, 512))),
    (TensorSpec("output", (1, 3, 128, 128)),),
)

KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="det_10g",
            filename="det_10g.onnx",
            role="detector",
            sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
            size=16_923_827,
            inputs=(TensorSpec("input.1", (1, 3, "H", "W")),),
            outputs=tuple(
                TensorSpec(name, ("N", width))
                for names, width in (
                    (("448", "471", "494"), 1),
                    (("451", "474", "497"), 4),
                    (("454", "477", "500"), 10),
                )
                for name in names
            ),
            licence=_INSIGHTFACE_LICENCE + "; from the buffalo_l pack",
        ),
        ModelSpec(
            name="w600k_r50",
            filename="w600k_r50.onnx",
            role="recogniser",
            sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
            size=174_383_860,
            inputs=(TensorSpec("input.1", ("N", 3, 112, 112)),),
            outputs=(TensorSpec("683", ("N", 512)),),
            licence=_INSIGHTFACE_LICENCE + "; from the buffalo_l pack",
        ),
        ModelSpec(
            name="inswapper_128",
            filename="inswapper_128.onnx",
            role="swapper",
            sha256="e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
            size=554_253_681,
            inputs=_SWAPPER_IO[0],
            outputs=_SWAPPER_IO[1],
            licence=_INSIGHTFACE_LICENCE,
        ),
        ModelSpec(
            name="inswapper_128_fp16",
            filename="inswapper_128_fp16.onnx",
            role="swapper",
            sha256=None,  # several fp16 conversions circulate: pin yours in the manifest
            size=None,
            inputs=_SWAPPER_IO[0],
            outputs=_SWAPPER_IO[1],
            licence=_INSIGHTFACE_LICENCE + "; an fp16 conversion of inswapper_128",
        ),
        ModelSpec(
            name="gfpgan_1.4",
            filename="gfpgan_1.4.onnx",
            role="enhancer",
            sha256=None,  # ONNX exports of GFPGAN v1.4 differ: pin yours in the manifest
            size=None,
            inputs=(TensorSpec("input", (1, 3, 512, 512)),),
            outputs=(TensorSpec("output", (1, 3, 512, 512)),),
            licence="GFPGAN: Apache-2.0 code; check the terms of the weights you convert",
        ),
    )
}

#: The model files each engine model name needs, detector first.
ENGINE_FILES: dict[str, tuple[str, ...]] = {
    "inswapper_128": ("det_10g", "w600k_r50", "inswapper_128"),
    "inswapper_128_fp16": ("det_10g", "w600k_r50", "inswapper_128_fp16"),
}


def load_registry(manifest: Path | None = None) -> dict[str, ModelSpec]:
    """The known models, with a manifest's entries applied. A manifest is JSON:
    ``{"models": {"NAME": {"sha256": "...", "size": 123, "filename": "..."}}}``; a new
    NAME must give ``filename``, ``role`` and ``sha256``. Raises ValueError naming the
    problem."""
    registry = dict(KNOWN_MODELS)
    if manifest is None:
        return registry
    try:
        document = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"models manifest {manifest}: {exc}") from exc
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f'models manifest {manifest}: expected {{"models": {{NAME: {{...}}}}}}')
    for name, entry in entries.items():
        registry[name] = _apply(registry.get(name), str(name), entry, manifest)
    return registry


def _apply(base: ModelSpec | None, name: str, entry: object, manifest: Path) -> ModelSpec:
    if not isinstance(entry, Mapping):
        raise ValueError(f"models manifest {manifest}: {name} must be an object")
    sha256 = entry.get("sha256")
    if sha256 is not None and (
        not isinstance(sha256, str) or len(sha256) != 64 or not _is_hex(sha256)
    ):
        raise ValueError(f"models manifest {manifest}: {name}.sha256 must be 64 hex digits")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ValueError(f"models manifest {manifest}: {name}.size must be a positive integer")
    filename = entry.get("filename")
    if filename is not None and (not isinstance(filename, str) or "/" in filename or not filename):
        raise ValueError(f"models manifest {manifest}: {name}.filename must be a plain file name")
    if base is None:
        role = entry.get("role")
        if filename is None or sha256 is None or role not in _ROLES:
            raise ValueError(
                f"models manifest {manifest}: the new model {name} needs filename, role and sha256"
            )
        base = ModelSpec(
            name=name,
            filename=filename,
            role=role,
            sha256=None,
            size=None,
            inputs=(),
            outputs=(),
            licence=str(entry.get("licence", "see the model's publisher")),
        )
    return replace(
        base,
        sha256=sha256.lower() if isinstance(sha256, str) else base.sha256,
        size=size if size is not None else (base.size if sha256 is None else None),
        filename=filename or base.filename,
    )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
