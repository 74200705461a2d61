"""Storage providers: where outputs go, chosen by ``STORAGE_PROVIDER``."""

from __future__ import annotations

from pixelbus.storage_uploader.errors import SettingsError
from pixelbus.storage_uploader.providers.base import StorageProvider, output_key, validate_key
from pixelbus.storage_uploader.providers.local import LocalProvider
from pixelbus.storage_uploader.providers.r2 import R2Provider
from pixelbus.storage_uploader.settings import StorageSettings

__all__ = [
    "LocalProvider",
    "R2Provider",
    "StorageProvider",
    "build_provider",
    "output_key",
    "validate_key",
]


def build_provider(settings: StorageSettings) -> StorageProvider:
    """The provider the settings choose (no I/O: clients are made on first use)."""
    if settings.provider == "local" and settings.local is not None:
        return LocalProvider(settings.local)
    if settings.provider == "r2" and settings.r2 is not None:
        return R2Provider(settings.r2)
    raise SettingsError(
        f"STORAGE_PROVIDER={settings.provider} has no settings", settings=("STORAGE_PROVIDER",)
    )
