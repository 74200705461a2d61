"""Errors of the storage uploader.

::

    pixelbus.runtime.errors.PixelbusError
    ├── StorageError                 a provider could not store (or reach) what it was given
    │   ├── StoragePermanentError    will not heal by retrying: bad credentials, missing
    │   │                            bucket, a 4xx refusal, an invalid key
    │   └── StorageRetryableError    may heal: 5xx, 429/SlowDown, timeouts, connection errors
    └── pixelbus.runtime.errors.SettingsError
        └── SettingsError            (also a ValueError) the environment does not configure
                                     a usable provider

Providers wrap every third-party exception into a ``StorageError``; the consumer shell maps
``retryable`` onto JetStream (nak with delay, or term). Messages name the provider and, where
an operator can fix it, the setting to check.
"""

from __future__ import annotations

from pixelbus.runtime import errors as runtime_errors

__all__ = [
    "SettingsError",
    "StorageError",
    "StoragePermanentError",
    "StorageRetryableError",
]


class StorageError(runtime_errors.PixelbusError):
    """Base of provider failures; ``code`` is the provider's error code (e.g. ``NoSuchBucket``)."""

    def __init__(self, message: str, *, provider: str, code: str) -> None:
        super().__init__(message, code=code)
        self.provider = provider


class StoragePermanentError(StorageError):
    retryable = False


class StorageRetryableError(StorageError):
    retryable = True


class SettingsError(runtime_errors.SettingsError, ValueError):
    """A bad or missing setting; the message is one line naming every setting at fault."""

    def __init__(self, message: str, *, settings: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.settings = settings
