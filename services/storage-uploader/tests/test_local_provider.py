from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from pixelbus.storage_uploader.errors import StoragePermanentError, StorageRetryableError
from pixelbus.storage_uploader.providers import (
    LocalProvider,
    build_provider,
    output_key,
    store_bytes,
)
from pixelbus.storage_uploader.settings import LocalSettings, StorageSettings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def provider(root: Path) -> LocalProvider:
    return LocalProvider(LocalSettings(directory=root, public_base_url="http://files.test:8000/"))


async def test_put_writes_the_bytes_and_returns_the_gateway_url(
    provider: LocalProvider, root: Path
) -> None:
    key = output_key("task_1", "out.png")
    url = await store_bytes(provider, key, b"\x89PNG data", "image/png")
    assert url == "http://files.test:8000/files/tasks/task_1/out.png"
    assert (root / "tasks" / "task_1" / "out.png").read_bytes() == b"\x89PNG data"


async def test_the_file_is_readable_by_others(provider: LocalProvider, root: Path) -> None:
    await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
    assert (root / "tasks" / "t" / "a.png").stat().st_mode & 0o044 == 0o044


async def test_the_same_key_twice_leaves_one_file_with_the_last_bytes(
    provider: LocalProvider, root: Path
) -> None:
    await store_bytes(provider, "tasks/t/a.png", b"first", "image/png")
    await store_bytes(provider, "tasks/t/a.png", b"second", "image/png")
    assert os.listdir(root / "tasks" / "t") == ["a.png"]  # no temp file left behind
    assert (root / "tasks" / "t" / "a.png").read_bytes() == b"second"


async def test_a_reader_of_the_old_file_never_sees_the_new_bytes_mixed_in(
    provider: LocalProvider, root: Path
) -> None:
    await store_bytes(provider, "tasks/t/a.png", b"old" * 1000, "image/png")
    path = root / "tasks" / "t" / "a.png"
    with path.open("rb") as reader:  # opened before the overwrite, read after it
        await store_bytes(provider, "tasks/t/a.png", b"new" * 10, "image/png")
        assert reader.read() == b"old" * 1000  # the file was replaced, not rewritten
    assert path.read_bytes() == b"new" * 10


async def test_a_failed_write_keeps_the_old_file_and_no_temp_file(
    provider: LocalProvider, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_bytes(provider, "tasks/t/a.png", b"old", "image/png")

    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StorageRetryableError) as caught:
        await store_bytes(provider, "tasks/t/a.png", b"new", "image/png")
    assert caught.value.code == "ENOSPC"
    assert os.listdir(root / "tasks" / "t") == ["a.png"]
    assert (root / "tasks" / "t" / "a.png").read_bytes() == b"old"


@pytest.mark.parametrize("key", ["../escape.png", "tasks/../../escape.png", "/tmp/escape.png"])
async def test_keys_that_escape_the_directory_are_refused(
    provider: LocalProvider, root: Path, key: str
) -> None:
    with pytest.raises(StoragePermanentError) as caught:
        await store_bytes(provider, key, b"x", "image/png")
    assert caught.value.code == "invalid_key"
    assert not (root.parent / "escape.png").exists()


@pytest.fixture
def outside(root: Path, tmp_path: Path) -> Path:
    """A directory outside the storage, linked from ``root/tasks``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "tasks").symlink_to(outside)
    return outside


async def test_a_symlink_out_of_the_directory_is_refused(
    provider: LocalProvider, outside: Path
) -> None:
    with pytest.raises(StoragePermanentError, match="outside"):
        await store_bytes(provider, "tasks/a.png", b"x", "image/png")
    assert await asyncio.to_thread(os.listdir, outside) == []


async def test_concurrent_puts_all_land(provider: LocalProvider, root: Path) -> None:
    keys = [output_key("t", f"{i}.png") for i in range(20)]
    urls = await asyncio.gather(*(store_bytes(provider, k, k.encode(), "image/png") for k in keys))
    assert len(set(urls)) == 20
    assert all((root / k).read_bytes() == k.encode() for k in keys)


async def test_check_creates_the_directory(provider: LocalProvider, root: Path) -> None:
    await provider.check()
    assert await asyncio.to_thread(root.is_dir)


@pytest.fixture
def root_is_a_file(root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_bytes(b"not a directory")


@pytest.mark.usefixtures("root_is_a_file")
async def test_a_file_where_the_directory_should_be_is_a_permanent_error(
    provider: LocalProvider,
) -> None:
    with pytest.raises(StoragePermanentError, match="PIXELBUS_LOCAL_STORAGE_DIR") as caught:
        await provider.check()
    assert caught.value.provider == "local"
    with pytest.raises(StoragePermanentError, match="PIXELBUS_LOCAL_STORAGE_DIR"):
        await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")


async def test_build_provider_makes_a_local_provider_from_the_environment(
    root: Path,
) -> None:
    settings = StorageSettings.from_env({"PIXELBUS_LOCAL_STORAGE_DIR": str(root)})
    provider = build_provider(settings)
    assert provider.name == "local"
    url = await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
    assert url == "http://127.0.0.1:8000/files/tasks/t/a.png"
    assert (root / "tasks" / "t" / "a.png").read_bytes() == b"x"
    await provider.aclose()


@pytest.mark.parametrize("fsync", [False, True])
async def test_fsync_only_when_asked_for_in_memory_and_streamed_uploads(
    root: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    from pixelbus.storage_uploader.providers.base import Upload

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    provider = LocalProvider(LocalSettings(directory=root, public_base_url="http://f", fsync=fsync))

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"ab"
        yield b"cd"

    await provider.store(Upload.of_bytes("tasks/t/inline.json", b"{}", "application/json"))
    await provider.store(Upload(key="tasks/t/big.bin", content_type="x", size=4, open=chunks))
    assert (root / "tasks" / "t" / "inline.json").read_bytes() == b"{}"
    assert (root / "tasks" / "t" / "big.bin").read_bytes() == b"abcd"
    assert len(synced) == (4 if fsync else 0)  # each file, then its directory


@pytest.mark.parametrize("link", ["tasks", "tasks/2026", "tasks/2026/12/03/task_1"])
async def test_a_symlink_anywhere_on_the_way_is_refused(
    provider: LocalProvider, root: Path, tmp_path: Path, link: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A first write (another task) makes and remembers the directories above.
    await store_bytes(provider, "tasks/2026/12/03/task_0/a.png", b"x", "image/png")
    target = root / link
    if target.exists():
        target.rename(tmp_path / "moved")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere)
    if link.count("/") < 4:  # the directories above a task's are checked once per process
        provider = LocalProvider(LocalSettings(directory=root, public_base_url="http://f"))
    with pytest.raises(StoragePermanentError, match="outside"):
        await store_bytes(provider, "tasks/2026/12/03/task_1/a.png", b"x", "image/png")
    assert not any(elsewhere.rglob("a.png"))
