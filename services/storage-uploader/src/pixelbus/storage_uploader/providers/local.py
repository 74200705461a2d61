"""Local storage: files under a directory, served by the gateway at ``/files/<key>``.

The provider of the embedded stack. A reader (the gateway) never sees half a file: a new
file is complete before its task's ``TaskCompleted`` publishes its URL, and a retried
upload replaces an existing file through a temp file and a rename (``_FileWriter``).
File I/O runs in a worker thread, off the event loop: bytes already in memory (an inline
output) in one hop, a stream chunk by chunk; a small file without ``fsync`` is written in
the loop itself (page-cache work, cheaper than the hop). ``fsync`` (``LocalSettings``)
flushes each file and then its directory (the rename) to the disk before it counts as
stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import stat
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
_KNOWN_FOLDERS = 1024
#: without fsync, a file this small is written in the event loop (microseconds of page
#: cache work), not in a thread
_WRITE_IN_LOOP_BYTES = 64 * 1024
_PID = os.getpid()
_TEMP_NUMBERS = itertools.count()  # temp names unique in this process (O_EXCL guards the rest)


class LocalProvider:
    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self.directory = settings.directory.resolve()
        self._public_base_url = settings.public_base_url.rstrip("/")
        self._fsync = settings.fsync
        self._known: dict[str, Path] = {}  # folder key → its checked real path

    def url_for(self, key: str) -> str:
        return f"{self._public_base_url}/files/{key}"

    def place(self, key: str) -> Path:
        """The file of ``key``, its directory made; refuses a key that would land outside
        the directory (a ``..``, a symlink on the way). The directories above the file's
        own are checked once and remembered (a day's directory serves all its tasks); the
        file's own directory, new for each task, costs one system call. Blocking: call it
        in a thread."""
        validate_key(key, self.name)
        folder, _, name = key.rpartition("/")
        if not folder:
            return self.directory / name
        above, _, own = folder.rpartition("/")
        directory = self._checked(above) / own
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):  # a symlink or a file
                raise self._refused(key) from None
        except FileNotFoundError:  # removed since it was checked: check again
            self._known.pop(above, None)
            directory = self._checked(above) / own
            directory.mkdir(exist_ok=True)
        return directory / name

    def _checked(self, folder: str) -> Path:
        known = self._known.get(folder)
        if known is not None:
            return known
        path = self.directory / folder if folder else self.directory
        path.mkdir(parents=True, exist_ok=True)
        real = path.resolve()  # resolve() also follows symlinks
        if not real.is_relative_to(self.directory):
            raise self._refused(folder)
        if len(self._known) >= _KNOWN_FOLDERS:
            self._known.clear()
        self._known[folder] = real
        return real

    def _refused(self, key: str) -> StoragePermanentError:
        return StoragePermanentError(
            f"local: refused key {key!r}: it leads outside {str(self.directory)!r}",
            provider=self.name,
            code="invalid_key",
        )

    async def store(self, upload: Upload) -> Stored:
        # content_type is not stored: the gateway derives it from the file extension.
        if upload.data is not None:  # one hop to a thread for the whole file
            try:
                if len(upload.data) <= _WRITE_IN_LOOP_BYTES and not self._fsync:
                    # a few page-cache system calls: cheaper than the hop to a thread
                    self._write_whole(upload.key, upload.data)
                else:
                    await asyncio.to_thread(self._write_whole, upload.key, upload.data)
            except OSError as exc:
                raise _storage_error(exc, f"writing {upload.key!r}") from exc
            return Stored(self.url_for(upload.key), self.name)
        chunks = upload.open()
        try:
            writer = await asyncio.to_thread(self._open_writer, upload.key)
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(writer.write, chunk)
                await asyncio.to_thread(writer.commit)
            finally:
                await asyncio.to_thread(writer.discard)
        except OSError as exc:
            raise _storage_error(exc, f"writing {upload.key!r}") from exc
        finally:
            await close_stream(chunks)
        return Stored(self.url_for(upload.key), self.name)

    def _open_writer(self, key: str) -> _FileWriter:
        return _FileWriter(self.place(key), self._fsync)

    def _write_whole(self, key: str, data: bytes) -> None:
        writer = self._open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.discard()

    async def check(self) -> None:
        try:
            await asyncio.to_thread(_check_writable, self.directory)
        except OSError as exc:
            raise _storage_error(exc, f"checking {str(self.directory)!r}") from exc

    async def aclose(self) -> None:
        """Nothing to release."""


class _FileWriter:
    """Writes one file so that no reader ever sees half of it, in as few system calls as
    a file allows (on this kind of disk each costs tens of microseconds).

    Nobody learns a file's URL before its task's ``TaskCompleted``, published once the file
    is complete: so a first write goes straight to its name (``O_EXCL``). A file that is
    already there (a retried upload, or a crash mid-write) may have readers: it is replaced
    by a temp file beside it, renamed onto it by ``commit``. ``discard`` removes what an
    unfinished write left (nothing after a commit).
    """

    def __init__(self, path: Path, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._committed = False
        try:
            self._fd: int | None = _create(path)
            self._tmp: Path | None = None
        except FileExistsError:
            self._tmp = path.parent / f".{path.name}.{_PID}-{next(_TEMP_NUMBERS)}.tmp"
            self._fd = _create(self._tmp)

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        assert self._fd is not None
        if self._fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._tmp is not None:
            os.replace(self._tmp, self._path)
        self._committed = True
        if self._fsync:  # the new name itself is durable once the directory is synced
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp or self._path)


def _create(path: Path) -> int:
    """A new file, readable by the gateway whatever the umask (one ``fchmod`` only when
    the umask would hide it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if _UMASK_HIDES:
        try:
            os.fchmod(fd, 0o644)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    return fd


def _umask() -> int:
    """This process's umask, read without changing it (Linux); 0o777 when unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


_UMASK_HIDES = bool(_umask() & 0o644)


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
