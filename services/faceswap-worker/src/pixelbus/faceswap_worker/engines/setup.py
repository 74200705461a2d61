"""Building a worker's engine catalog from its settings, once per process."""

from __future__ import annotations

import onnxruntime as ort

from pixelbus.faceswap_worker.engines.base import FaceSwapEngine
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog
from pixelbus.faceswap_worker.engines.errors import EngineError
from pixelbus.faceswap_worker.engines.sessions import SessionCache, resolve_providers
from pixelbus.faceswap_worker.models.registry import load_registry
from pixelbus.faceswap_worker.models.store import ModelStore
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.runtime.errors import SettingsError

__all__ = ["build_catalog", "model_store"]


def model_store(settings: FaceSwapSettings) -> ModelStore:
    try:
        registry = load_registry(settings.models.manifest)
    except ValueError as exc:
        raise SettingsError(f"PIXELBUS_MODELS_MANIFEST: {exc}") from None
    return ModelStore(settings.models.directory, registry)


def build_catalog(
    settings: FaceSwapSettings, builtin: FaceSwapEngine | None = None
) -> EngineCatalog:
    """The catalog with the built-in engine, the remote engine when ``FACE_SWAP_API_URL``
    is set, and the ONNX engines of the models directory. The default model is loaded
    now: a worker whose default model is missing does not start (SettingsError)."""
    try:
        providers = resolve_providers(settings.models.providers, ort.get_available_providers())
    except ValueError as exc:
        raise SettingsError(f"PIXELBUS_ONNX_PROVIDERS: {exc}") from None
    fixed: dict[str, FaceSwapEngine] = {}
    if builtin is not None:
        fixed["builtin"] = builtin
    if settings.remote.url is not None:
        from pixelbus.faceswap_worker.engines.remote import RemoteEngine

        fixed["remote"] = RemoteEngine(
            settings.remote.url,
            timeout_s=settings.remote.timeout_s,
            retry_count=settings.remote.retry_count,
            backoff_s=settings.remote.backoff_s,
            max_result_pixels=settings.max_image_pixels,
        )
    catalog = EngineCatalog(
        fixed=fixed,
        store=model_store(settings),
        sessions=SessionCache(providers),
        detect_size=settings.models.detect_size,
        detect_threshold=settings.models.detect_threshold,
    )
    try:
        catalog.get(settings.default_model)
    except EngineError as exc:
        raise SettingsError(
            f"PIXELBUS_FACESWAP_DEFAULT_MODEL={settings.default_model}: {exc}"
        ) from None
    except KeyError:
        raise SettingsError(
            f"PIXELBUS_FACESWAP_DEFAULT_MODEL={settings.default_model} is not available here"
        ) from None
    return catalog
