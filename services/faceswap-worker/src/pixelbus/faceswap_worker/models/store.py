"""The models directory: where each known model's file lives and whether it is there and
intact. Hashing a 500 MB file takes seconds, so a verified file gets a stamp beside it
(``NAME.onnx.sha256``: the hash, size and modification time); the stamp stands while
the file's size and modification time are unchanged."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pixelbus.faceswap_worker.models.registry import ModelSpec

__all__ = ["ModelState", "ModelStatus", "ModelStore", "sha256_file"]

_CHUNK = 1 << 20


class ModelState(enum.StrEnum):
    MISSING = "missing"
    VERIFIED = "verified"  # present, size and sha256 match the pin
    UNPINNED = "present, unverified"  # present, but no sha256 is pinned for it
    CORRUPT = "corrupt"  # present, but size or sha256 differ from the pin


@dataclass(frozen=True, slots=True)
class ModelStatus:
    spec: ModelSpec
    path: Path
    state: ModelState
    size: int | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.state in (ModelState.VERIFIED, ModelState.UNPINNED)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_CHUNK):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


class ModelStore:
    def __init__(self, directory: Path, registry: Mapping[str, ModelSpec]) -> None:
        self.directory = directory
        self.registry = registry

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.registry[name]
        except KeyError:
            known = ", ".join(sorted(self.registry))
            raise KeyError(f"unknown model {name!r} (known: {known})") from None

    def status(self, name: str, *, verify: bool = True) -> ModelStatus:
        """Whether ``name`` is installed and intact. ``verify=False`` checks only the
        size (cheap, for task time); otherwise the sha256 too (stamped once)."""
        spec = self.spec(name)
        path = self.directory / spec.filename
        try:
            stat = path.stat()
        except FileNotFoundError:
            return ModelStatus(spec, path, ModelState.MISSING)
        size = stat.st_size
        if spec.size is not None and size != spec.size:
            detail = f"{size} bytes where {spec.size} are expected"
            return ModelStatus(spec, path, ModelState.CORRUPT, size, detail)
        if spec.sha256 is None:
            return ModelStatus(spec, path, ModelState.UNPINNED, size)
        stamp = self._read_stamp(path)
        if stamp == (spec.sha256, size, stat.st_mtime_ns):
            return ModelStatus(spec, path, ModelState.VERIFIED, size)
        if stamp is not None and stamp[1:] == (size, stat.st_mtime_ns):
            detail = f"sha256 {stamp[0]} is not the pinned {spec.sha256}"
            return ModelStatus(spec, path, ModelState.CORRUPT, size, detail)
        if not verify:
            return ModelStatus(spec, path, ModelState.VERIFIED, size, "size only")
        digest = sha256_file(path)
        self.write_stamp(path, digest)
        if digest != spec.sha256:
            detail = f"sha256 {digest} is not the pinned {spec.sha256}"
            return ModelStatus(spec, path, ModelState.CORRUPT, size, detail)
        return ModelStatus(spec, path, ModelState.VERIFIED, size)

    def write_stamp(self, path: Path, digest: str) -> None:
        stat = path.stat()
        record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        _stamp_path(path).write_text(json.dumps(record))

    @staticmethod
    def _read_stamp(path: Path) -> tuple[str, int, int] | None:
        try:
            record = json.loads(_stamp_path(path).read_text())
            return str(record["sha256"]), int(record["size"]), int(record["mtime_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")
