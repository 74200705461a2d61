"""A third-party Google Cloud Storage emulator for tests: ``gcp-storage-emulator`` (PyPI),
run as its own process (``python -m gcp_storage_emulator start``) on a free loopback port,
in memory. The GCS provider's tests run against it as well as against the kit's
``GcsServer``, so that they do not only check our reading of the API against our own.

It speaks the JSON API (buckets, objects, media/multipart/resumable uploads) and path-style
downloads without authentication; it checks no token and no signature, and has no fault
injection. What was stored is read back through its JSON API, as any client would.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from pixelbus.testkit.nats_server import free_port, stop_processes

__all__ = ["GcsEmulator", "StoredObject", "gcs_emulator"]

_HOST = "127.0.0.1"


class StoredObject:
    """An object as the emulator's JSON API describes it, and its bytes."""

    def __init__(self, data: bytes, content_type: str | None, cache_control: str | None) -> None:
        self.data = data
        self.content_type = content_type
        self.cache_control = cache_control


class GcsEmulator:
    """``gcp-storage-emulator`` in a child process; ``url`` is its ``STORAGE_EMULATOR_HOST``."""

    def __init__(self, log_file: Path) -> None:
        self.port = free_port()
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", "start",
                 "--host", _HOST, "--port", str(self.port), "--in-memory"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:  # polling a starting process: its health check answers "OK"
            assert self._process.poll() is None, self.log_file.read_text()
            try:
                if self._http.get("/").text == "OK":
                    return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gcp-storage-emulator did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self._http.close()
        if self._process is not None:
            stop_processes(self._process)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"bucket-{uuid.uuid4().hex[:12]}"
        created = self._http.post("/storage/v1/b", params={"project": "test"}, json={"name": name})
        assert created.status_code == 200, created.text
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self._http.get(f"/storage/v1/b/{bucket}/o")
        assert listed.status_code == 200, listed.text
        return sorted(item["name"] for item in listed.json().get("items", []))

    def stored(self, bucket: str, key: str) -> StoredObject | None:
        path = f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}"
        meta = self._http.get(path)
        if meta.status_code == 404:
            return None
        assert meta.status_code == 200, meta.text
        data = self._http.get(path, params={"alt": "media"})
        assert data.status_code == 200, data.text
        resource = meta.json()
        return StoredObject(data.content, resource.get("contentType"), resource.get("cacheControl"))


@pytest.fixture
def gcs_emulator(tmp_path: Path) -> Iterator[GcsEmulator]:
    emulator = GcsEmulator(tmp_path / "gcs-emulator.log")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
