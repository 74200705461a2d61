"""Shared fixtures of the integration and end-to-end tests."""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pixelbus.testkit.nats_server import NatsServer
from tests.stack import Stack, running_stack


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def data_uri(path: Path, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


@pytest.fixture(scope="session")
def astronaut() -> Path:
    return package_file("skimage", "data", "astronaut.png")


@pytest.fixture(scope="session")
def grace_hopper() -> Path:
    return package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")


@pytest.fixture
async def stack(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tmp_path) as running:
        yield running
