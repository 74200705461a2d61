"""Model registry, store and ``pull`` against a local HTTP server of stand-in files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import StandIns
from pixelbus.faceswap_worker.models.download import PullError, pull
from pixelbus.faceswap_worker.models.registry import KNOWN_MODELS, load_registry
from pixelbus.faceswap_worker.models.store import ModelState, ModelStore
from pixelbus.testkit.model_server import ModelServer, model_server

SERVER_FIXTURES = frozenset({"server"})  # the model server: the test kit marks the tests `servers`


@pytest.fixture
def files(standins: StandIns) -> dict[str, bytes]:
    return {
        f"models/{name}": (standins.directory / name).read_bytes()
        for name in ("inswapper_128_fp16.onnx", "w600k_r50.onnx")
    }


@pytest.fixture
def server(files: dict[str, bytes]) -> Iterator[ModelServer]:
    with model_server(files) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def store(tmp_path: Path, standins: StandIns) -> ModelStore:
    return ModelStore(tmp_path / "models", load_registry(standins.manifest))


class Recorder:
    def __init__(self) -> None:
        self.total: int | None = None
        self.start_at = -1
        self.advanced = 0
        self.closed = False

    def start(self, total: int | None, done: int) -> None:
        self.total, self.start_at = total, done

    def advance(self, size: int) -> None:
        self.advanced += size

    def close(self) -> None:
        self.closed = True


def test_the_registry_pins_the_published_models() -> None:
    swapper = KNOWN_MODELS["inswapper_128"]
    assert swapper.filename == "inswapper_128.onnx" and swapper.size == 554_253_681
    assert [t.name for t in swapper.inputs] == ["target", "source"]
    assert KNOWN_MODELS["det_10g"].outputs[0].name == "448"
    assert "non-commercial" in swapper.licence
    assert not KNOWN_MODELS["inswapper_128_fp16"].pinned


def test_a_manifest_pins_and_adds_models(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            {
                "models": {
                    "inswapper_128_fp16": {"sha256": "ab" * 32, "size": 10},
                    "my_swapper": {"filename": "mine.onnx", "role": "swapper", "sha256": "cd" * 32},
                }
            }
        )
    )
    registry = load_registry(manifest)
    assert registry["inswapper_128_fp16"].sha256 == "ab" * 32
    assert registry["my_swapper"].filename == "mine.onnx"
    manifest.write_text(json.dumps({"models": {"x": {"sha256": "zz"}}}))
    with pytest.raises(ValueError, match="64 hex"):
        load_registry(manifest)


def test_pull_downloads_verifies_and_stamps(
    store: ModelStore, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    assert store.status("inswapper_128_fp16").state is ModelState.MISSING
    progress = Recorder()
    path = pull(store, "inswapper_128_fp16", base_url=server.url, client=http, progress=progress)
    assert path.read_bytes() == files["models/inswapper_128_fp16.onnx"]
    assert progress.total == len(path.read_bytes()) == progress.advanced and progress.closed
    assert store.status("inswapper_128_fp16").state is ModelState.VERIFIED
    assert Path(str(path) + ".sha256").exists()
    # Verified already: a second pull downloads nothing.
    pull(store, "inswapper_128_fp16", base_url=server.url, client=http)
    assert len(server.ranges) == 1


def test_an_interrupted_pull_resumes_with_range(
    store: ModelStore, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    body = files["models/w600k_r50.onnx"]
    server.cut_after = 100_000
    with pytest.raises(PullError, match="run the command again to resume"):
        pull(store, "w600k_r50", base_url=server.url, client=http)
    part = store.directory / "w600k_r50.onnx.part"
    held = part.stat().st_size
    assert 0 < held <= 100_000
    assert not (store.directory / "w600k_r50.onnx").exists()
    progress = Recorder()
    path = pull(store, "w600k_r50", base_url=server.url, client=http, progress=progress)
    assert server.ranges == [None, f"bytes={held}-"]
    assert server.sent[-1] == len(body) - held
    assert progress.start_at == held
    assert path.read_bytes() == body and not part.exists()


def test_a_server_without_range_support_restarts_the_download(
    store: ModelStore, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    server.honour_range = False
    part = store.directory / "w600k_r50.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from elsewhere")
    path = pull(store, "w600k_r50", base_url=server.url, client=http)
    assert path.read_bytes() == files["models/w600k_r50.onnx"]


def test_a_corrupted_download_is_refused(
    store: ModelStore, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    good = files["models/w600k_r50.onnx"]
    server.files["models/w600k_r50.onnx"] = good[:5000] + bytes([good[5000] ^ 0xFF]) + good[5001:]
    with pytest.raises(PullError, match=r"sha256 of the download is .* refused"):
        pull(store, "w600k_r50", base_url=server.url, client=http)
    assert list(store.directory.iterdir()) == []  # neither the file nor a partial one


def test_a_wrong_size_is_refused(
    store: ModelStore, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    server.files["models/w600k_r50.onnx"] += b"trailing"
    with pytest.raises(PullError, match=r"bytes where .* are expected"):
        pull(store, "w600k_r50", base_url=server.url, client=http)


def test_an_unpinned_model_needs_a_sha256(
    tmp_path: Path, server: ModelServer, http: httpx.Client, files: dict[str, bytes]
) -> None:
    store = ModelStore(tmp_path, load_registry(None))  # the registry alone: fp16 unpinned
    with pytest.raises(PullError, match="--sha256"):
        pull(store, "inswapper_128_fp16", base_url=server.url, client=http)
    digest = hashlib.sha256(files["models/inswapper_128_fp16.onnx"]).hexdigest()
    path = pull(store, "inswapper_128_fp16", base_url=server.url, client=http, sha256=digest)
    assert path.exists()
    assert store.status("inswapper_128_fp16").state is ModelState.UNPINNED


def test_a_missing_file_on_the_server_is_a_clear_error(
    store: ModelStore, server: ModelServer, http: httpx.Client
) -> None:
    with pytest.raises(PullError, match="HTTP 404"):
        pull(store, "det_10g", base_url=server.url, client=http)
    with pytest.raises(PullError, match="http"):
        pull(store, "det_10g", base_url="ftp://example.invalid/", client=http)


def test_status_finds_corrupt_files_and_trusts_the_stamp(
    store: ModelStore, server: ModelServer, http: httpx.Client
) -> None:
    path = pull(store, "w600k_r50", base_url=server.url, client=http)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the stamp no longer applies
    status = store.status("w600k_r50")
    assert status.state is ModelState.CORRUPT and "sha256" in status.detail
    assert store.status("w600k_r50", verify=False).state is ModelState.CORRUPT  # stamped now
    path.write_bytes(b"short")
    assert store.status("w600k_r50", verify=False).state is ModelState.CORRUPT
