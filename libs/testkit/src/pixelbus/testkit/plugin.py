"""pytest plugin of the test kit (registered as the ``pixelbus`` pytest11 entry point).

Besides the fixtures, it keeps ``just unit`` pure. A test that starts a server or a child
process carries the ``servers`` marker: set by hand, or here, for every test that uses a
fixture named in ``SERVER_FIXTURES`` (the kit's own, plus the names a conftest or a test
module lists in a module-level ``SERVER_FIXTURES``). A run that deselects them
(``-m "not servers"``, as ``just unit`` does) refuses, in each test it runs, to listen on
a socket or start a process, so a server test that lacks the marker fails there, saying so,
instead of quietly making the unit run slow and flaky.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from pixelbus.testkit.nats_server import NatsServer

#: the kit's fixtures that start a server (nats-server, an HTTP server)
SERVER_FIXTURES = frozenset(
    {
        "nats_server",
        "nc",
        "nats_cluster",
        "partitionable_cluster",
        "fake_comfyui",
        "gcs_server",
        "gcs_emulator",
        "s3_server",
        "s3_bucket",
        "cf_images_server",
    }
)
_PURE = re.compile(r"\bnot\s+servers\b")


class ServerInUnitTest(RuntimeError):
    """A test run as a unit test (``-m "not servers"``) started a server or a process."""


def _server_fixtures(config: pytest.Config, items: list[pytest.Item]) -> set[str]:
    names = set(SERVER_FIXTURES)
    for plugin in config.pluginmanager.get_plugins():
        names.update(getattr(plugin, "SERVER_FIXTURES", ()))  # the conftests' lists
    for item in items:
        module = getattr(item, "module", None)
        names.update(getattr(module, "SERVER_FIXTURES", ()))
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``servers`` each test whose fixtures start a server (before ``-m`` selects)."""
    names = _server_fixtures(config, items)
    for item in items:
        if names.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    markexpr = item.config.getoption("markexpr", "") or ""
    if not _PURE.search(markexpr) or item.get_closest_marker("servers"):
        return (yield)

    def refuse(what: str) -> Any:
        def refused(*args: object, **kwargs: object) -> None:
            raise ServerInUnitTest(
                f"{item.nodeid} {what} in a unit run: mark it `servers` (or list its fixture "
                "in SERVER_FIXTURES) so that `just unit` leaves it out"
            )

        return refused

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "listen", refuse("listens on a socket"))
        patch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
        return (yield)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server per test: JetStream, temp store, random loopback port."""
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield client
    finally:
        await client.close()


from pixelbus.testkit.cf_images_server import cf_images_server  # noqa: E402, F401 — fixture
from pixelbus.testkit.fake_comfyui import fake_comfyui  # noqa: E402, F401 — fixture
from pixelbus.testkit.gcs_emulator import gcs_emulator  # noqa: E402, F401 — fixture
from pixelbus.testkit.gcs_server import gcs_server  # noqa: E402, F401 — fixture
from pixelbus.testkit.nats_cluster import (  # noqa: E402, F401 — fixtures
    nats_cluster,
    partitionable_cluster,
)
from pixelbus.testkit.s3_server import s3_bucket, s3_server  # noqa: E402, F401 — fixtures
