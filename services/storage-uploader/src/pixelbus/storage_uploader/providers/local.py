"""Local storage: files under a directory, served by the gateway at ``/files/<key>``.

The provider of the embedded stack. A file is written to a temporary name beside its
target and renamed into place, so a reader (the gateway) never sees half a file; a retried
upload replaces the file. File I/O runs in a worker thread, off the event loop: bytes
already in memory (an inline output) in one hop, a stream chunk by chunk. ``fsync``
(``LocalSettings``) flushes each file to the disk before it counts as stored.
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
from pixelbus.storage_uploader.providers.base import Stored, Upload, close_stream, validate_key
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
        self._fsync = settings.fsync

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
        return (await self.store(Upload.of_bytes(key, data, content_type))).url

    async def store(self, upload: Upload) -> Stored:
        # content_type is not stored: the gateway derives it from the file extension.
        path = self.path_for(upload.key)
        if upload.data is not None:
            try:
                await asyncio.to_thread(_write_whole, path, upload.data, self._fsync)
            except OSError as exc:
                raise _storage_error(exc, f"writing {str(path)!r}") from exc
            return Stored(self.url_for(upload.key), self.name)
        chunks = upload.open()
        try:
            writer = await asyncio.to_thread(_AtomicWriter, path, self._fsync)
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(writer.write, chunk)
                await asyncio.to_thread(writer.commit)
            finally:
                await asyncio.to_thread(writer.discard)
        except OSError as exc:
            raise _storage_error(exc, f"writing {str(path)!r}") from exc
        finally:
            await close_stream(chunks)
        return Stored(self.url_for(upload.key), self.name)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(_check_writable, self.directory)
        except OSError as exc:
            raise _storage_error(exc, f"checking {str(self.directory)!r}") from exc

    async def aclose(self) -> None:
        """Nothing to release."""


class _AtomicWriter:
    """A temp file beside ``path``, renamed onto it by ``commit``; ``discard`` removes
    what is left of it (nothing after a commit)."""

    def __init__(self, path: Path, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")
        self._path = path
        self._fsync = fsync
        self._committed = False

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self) -> None:
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)  # mkstemp makes it private; the gateway must read it
        os.replace(self._tmp, self._path)
        self._committed = True

    def discard(self) -> None:
        self._file.close()
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _write_whole(path: Path, data: bytes, fsync: bool) -> None:
    writer = _AtomicWriter(path, fsync)
    try:
        writer.write(data)
        writer.commit()
    finally:
        writer.discard()


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
