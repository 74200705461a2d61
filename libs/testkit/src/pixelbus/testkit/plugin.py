"""pytest plugin of the test kit (registered as the ``pixelbus`` pytest11 entry point)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from pixelbus.testkit.nats_server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server per test: JetStream, temp store, random loopback port."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield client
    finally:
        await client.close()


from pixelbus.testkit.cf_images_server import cf_images_server  # noqa: E402, F401 — fixture
from pixelbus.testkit.fake_comfyui import fake_comfyui  # noqa: E402, F401 — fixture
from pixelbus.testkit.gcs_server import gcs_server  # noqa: E402, F401 — fixture
from pixelbus.testkit.nats_cluster import (  # noqa: E402, F401 — fixtures
    nats_cluster,
    partitionable_cluster,
)
from pixelbus.testkit.s3_server import s3_bucket, s3_server  # noqa: E402, F401 — fixtures
