"""Local storage: files under a directory, served by the gateway at ``/files/<key>``.

The provider of the embedded stack. A file is written to a temporary name beside its
target and renamed into place, so a reader (the gateway) never sees half a file; a retried
upload replaces the file. File I/O runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
from pathlib import Path

from pixelbus.storage_uploader.errors import (
    StorageError,
    StoragePermanentError,
    StorageRetryableError,
)
from pixelbus.storage_uploader.providers.base import validate_key
from pixelbus.storage_uploader.settings import LocalSettings

__all__ = ["LocalProvider"]

# Errors that no retry will fix: wrong permissions, a read-only file system, or a file
# where a directory should be (EEXIST, ENOTDIR). A full disk (ENOSPC) may heal.
_PERMANENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)
_SETTING = "PIXELBUS_LOCAL_STORAGE_DIR"


class LocalProvider:
    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self.directory = settings.directory.resolve()
        self._public_base_url = settings.public_base_url.rstrip("/")

    def url_for(self, key: str) -> str:
        return f"{self._public_base_url}/files/{key}"

    def path_for(self, key: str) -> Path:
        """The file of ``key``; refuses a key that would land outside the directory."""
        validate_key(key, self.name)
        path = (self.directory / key).resolve()  # resolve() also follows symlinks
        if not path.is_relative_to(self.directory):
            raise StoragePermanentError(
                f"local: refused key {key!r}: it leads outside {str(self.directory)!r}",
                provider=self.name,
                code="invalid_key",
            )
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        # content_type is not stored: the gateway derives it from the file extension.
        path = self.path_for(key)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise _storage_error(exc, f"writing {str(path)!r}") from exc
        return self.url_for(key)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(_check_writable, self.directory)
        except OSError as exc:
            raise _storage_error(exc, f"checking {str(self.directory)!r}") from exc

    async def aclose(self) -> None:
        """Nothing to release."""


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the gateway must be able to read it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_writable(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))


def _storage_error(exc: OSError, doing: str) -> StorageError:
    reason = exc.strerror or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if exc.errno in _PERMANENT_ERRNOS:
        return StoragePermanentError(
            f"local: {reason} {doing}: check {_SETTING}", provider="local", code=code
        )
    return StorageRetryableError(f"local: {reason} {doing}", provider="local", code=code)
