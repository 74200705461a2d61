"""ONNX Runtime sessions: execution providers from a setting, one session per model file
per process (sessions are thread-safe for ``run`` and expensive to create)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["PROVIDER_ALIASES", "SessionCache", "input_dtype", "resolve_providers"]

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def resolve_providers(setting: str, available: Sequence[str]) -> list[str]:
    """``auto``: CUDA when this onnxruntime has it, then CPU. Otherwise a comma list of
    aliases (``cuda,cpu``) or provider names, kept in order; ValueError names an unknown
    or unavailable one. CPU is always appended as the last resort."""
    wanted = [part.strip() for part in setting.split(",") if part.strip()] or ["auto"]
    providers: list[str] = []
    for item in wanted:
        if item.lower() == "auto":
            chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
        else:
            name = PROVIDER_ALIASES.get(item.lower(), item)
            if name not in available:
                raise ValueError(
                    f"execution provider {item!r} is not available in this onnxruntime "
                    f"(available: {', '.join(available)})"
                )
            chosen = [name]
        providers.extend(p for p in chosen if p not in providers)
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return providers


def input_dtype(session: ort.InferenceSession, name: str) -> type[np.floating]:
    """The numpy dtype that the session's input ``name`` takes (never assumed)."""
    for item in session.get_inputs():
        if item.name == name:
            try:
                return _DTYPES[item.type]  # type: ignore[return-value]
            except KeyError:
                raise ValueError(f"input {name!r} has unsupported type {item.type}") from None
    raise ValueError(f"the model has no input named {name!r}")


class SessionCache:
    """Creates each model's session once and hands the same one out afterwards."""

    def __init__(self, providers: Sequence[str], *, intra_op_threads: int = 0) -> None:
        self.providers = list(providers)
        self._threads = intra_op_threads
        self._sessions: dict[Path, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> ort.InferenceSession:
        key = path.resolve()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                options = ort.SessionOptions()
                options.log_severity_level = 3  # unused initializers such as emap are expected
                if self._threads:
                    options.intra_op_num_threads = self._threads
                session = ort.InferenceSession(
                    str(key), sess_options=options, providers=self.providers
                )
                self._sessions[key] = session
            return session

    def __len__(self) -> int:
        return len(self._sessions)
