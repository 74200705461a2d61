"""Engines by the model name a task asks for. The ONNX engines are built on first use
from the models directory and kept for the life of the process (their sessions are
shared); a model whose files are missing or damaged raises ``ModelNotInstalled``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from pixelbus.faceswap_worker.engines.arcface import ArcFaceEmbedder
from pixelbus.faceswap_worker.engines.base import FaceSwapEngine
from pixelbus.faceswap_worker.engines.enhancer import FaceEnhancer
from pixelbus.faceswap_worker.engines.errors import ModelNotInstalled
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.scrfd import ScrfdDetector
from pixelbus.faceswap_worker.engines.sessions import SessionCache
from pixelbus.faceswap_worker.engines.swapper import InswapperModel, read_emap
from pixelbus.faceswap_worker.models.registry import ENGINE_FILES
from pixelbus.faceswap_worker.models.store import ModelState, ModelStore

__all__ = ["EngineCatalog", "UnknownModel"]


class UnknownModel(KeyError):
    pass


class EngineCatalog:
    def __init__(
        self,
        *,
        fixed: Mapping[str, FaceSwapEngine] | None = None,
        store: ModelStore | None = None,
        sessions: SessionCache | None = None,
        detect_size: int = 640,
        detect_threshold: float = 0.5,
    ) -> None:
        self._engines: dict[str, FaceSwapEngine] = dict(fixed or {})
        self._enhancers: dict[str, FaceEnhancer] = {}
        self._store = store
        self._sessions = (
            sessions if sessions is not None else SessionCache(["CPUExecutionProvider"])
        )
        self._detect_size = detect_size
        self._detect_threshold = detect_threshold
        self._detector: ScrfdDetector | None = None
        self._embedder: ArcFaceEmbedder | None = None
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        """The model names this worker can serve (built or buildable from installed files)."""
        names = set(self._engines)
        if self._store is not None:
            for model, files in ENGINE_FILES.items():
                if all(self._store.status(f, verify=False).usable for f in files):
                    names.add(model)
        return sorted(names)

    def get(self, model: str) -> FaceSwapEngine:
        """The engine for ``model``; raises ``UnknownModel`` or ``ModelNotInstalled``.
        May load models (seconds): call it from a worker thread."""
        with self._lock:
            engine = self._engines.get(model)
            if engine is not None:
                return engine
            if model not in ENGINE_FILES or self._store is None:
                raise UnknownModel(model)
            engine = self._build_inswapper(model, self._store)
            self._engines[model] = engine
            return engine

    def enhancer(self, name: str) -> FaceEnhancer:
        with self._lock:
            enhancer = self._enhancers.get(name)
            if enhancer is not None:
                return enhancer
            store = self._store
            spec = store.registry.get(name) if store is not None else None
            if store is None or spec is None or spec.role != "enhancer":
                raise UnknownModel(name)
            [path] = self._require(name, store, [name])
            enhancer = FaceEnhancer(name, self._sessions.get(path))
            self._enhancers[name] = enhancer
            return enhancer

    def _build_inswapper(self, model: str, store: ModelStore) -> InswapperEngine:
        detector_file, recogniser_file, swapper_file = ENGINE_FILES[model]
        detector_path, recogniser_path, swapper_path = self._require(
            model, store, [detector_file, recogniser_file, swapper_file]
        )
        if self._detector is None:
            size = self._detect_size
            self._detector = ScrfdDetector(
                self._sessions.get(detector_path),
                input_size=(size, size),
                score_threshold=self._detect_threshold,
            )
        if self._embedder is None:
            self._embedder = ArcFaceEmbedder(self._sessions.get(recogniser_path))
        swapper = InswapperModel(model, self._sessions.get(swapper_path), read_emap(swapper_path))
        return InswapperEngine(
            detector=self._detector,
            embedder=self._embedder,
            swapper=swapper,
            enhancers=self.enhancer,
        )

    @staticmethod
    def _require(model: str, store: ModelStore, files: list[str]) -> list[Path]:
        statuses = [store.status(f, verify=False) for f in files]
        missing = [s.spec.name for s in statuses if s.state is ModelState.MISSING]
        if missing:
            raise ModelNotInstalled(model, missing, f"not installed in {store.directory}")
        broken = [s for s in statuses if not s.usable]
        if broken:
            details = "; ".join(f"{s.spec.filename}: {s.detail}" for s in broken)
            raise ModelNotInstalled(model, [s.spec.name for s in broken], f"damaged ({details})")
        return [s.path for s in statuses]
