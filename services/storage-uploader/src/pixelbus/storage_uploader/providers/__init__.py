"""Storage providers: where outputs go, chosen by ``STORAGE_PROVIDER``."""

from __future__ import annotations

from pixelbus.storage_uploader.errors import SettingsError
from pixelbus.storage_uploader.providers.base import (
    StorageProvider,
    Stored,
    Upload,
    output_key,
    store_bytes,
    validate_key,
)
from pixelbus.storage_uploader.providers.cf_images import CfImagesProvider
from pixelbus.storage_uploader.providers.gcs import GcsProvider
from pixelbus.storage_uploader.providers.local import LocalProvider
from pixelbus.storage_uploader.providers.r2 import R2Provider
from pixelbus.storage_uploader.settings import (
    DEFAULT_UPLOAD_CONCURRENCY,
    ProviderName,
    StorageSettings,
)

__all__ = [
    "CfImagesProvider",
    "GcsProvider",
    "LocalProvider",
    "R2Provider",
    "StorageProvider",
    "Stored",
    "Upload",
    "build_provider",
    "output_key",
    "store_bytes",
    "validate_key",
]


def build_provider(
    settings: StorageSettings, *, connections: int = DEFAULT_UPLOAD_CONCURRENCY
) -> StorageProvider:
    """The provider the settings choose (no I/O: clients are made on first use), with room
    for ``connections`` requests at once (the uploader's concurrency)."""
    if settings.provider == "cf_images" and settings.cf_images is not None:
        fallback = settings.cf_images.fallback
        return CfImagesProvider(
            settings.cf_images,
            fallback=_build(settings, fallback, connections) if fallback else None,
        )
    return _build(settings, settings.provider, connections)


def _build(settings: StorageSettings, name: ProviderName, connections: int) -> StorageProvider:
    if name == "local" and settings.local is not None:
        return LocalProvider(settings.local)
    if name == "r2" and settings.r2 is not None:
        return R2Provider(settings.r2, connections=connections)
    if name == "gcs" and settings.gcs is not None:
        return GcsProvider(settings.gcs)
    raise SettingsError(f"STORAGE_PROVIDER={name} has no settings", settings=("STORAGE_PROVIDER",))
