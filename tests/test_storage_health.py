"""``/api/health`` shows the storage provider and whether the uploader can reach it, from
the uploader's presence in KV (no call to the provider per health request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.s3_server import FaultyProxy, S3Server
from pixelbus.testkit.waiting import eventually
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


async def storage_health(stack: Stack) -> dict[str, Any] | None:
    """The health body once the uploader has published its verdict (else ``None``)."""
    body: dict[str, Any] = (await stack.http.get("/api/health")).json()
    return body if body["storage"]["uploaders"] and body["storage"]["checked_at"] else None


async def test_health_shows_the_local_provider_reachable_and_no_uploader_among_workers(
    stack: Stack,
) -> None:
    body = await eventually(lambda: storage_health(stack))
    assert body["status"] == "ok"
    storage = body["storage"]
    assert (storage["provider"], storage["uploaders"], storage["reachable"]) == ("local", 1, True)
    assert storage["error"] is None
    assert all(worker["pool"] != "storage" for worker in body["workers"])
    assert "storage" not in body["pools"]


async def test_health_shows_an_unreachable_bucket_with_the_setting_to_fix_and_is_cached(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server
) -> None:
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        env = {
            "STORAGE_PROVIDER": "r2",
            "R2_ACCESS_KEY_ID": s3_server.credentials.access_key_id,
            "R2_SECRET_ACCESS_KEY": s3_server.credentials.secret_access_key,
            "R2_BUCKET": "no-such-bucket",
            "PIXELBUS_R2_ENDPOINT_URL": proxy.endpoint_url,
        }
        async with running_stack(nats_server.url, tmp_path, **env) as stack:
            body = await eventually(lambda: storage_health(stack))
            for _ in range(5):
                await stack.http.get("/api/health")
            checks = proxy.requests
    assert body["status"] == "degraded"
    storage = body["storage"]
    assert (storage["provider"], storage["reachable"]) == ("r2", False)
    assert "R2_BUCKET" in storage["error"] and "no-such-bucket" in storage["error"]
    assert checks == 1  # one HeadBucket at the uploader's start, none per health request
