"""The service refuses to start half-configured: one line naming the missing settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.servers  # the uploader as a child process
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STORAGE_PROVIDER": "gcs"}, ["PIXELBUS_GCS_BUCKET", "PIXELBUS_GCS_PUBLIC_URL"]),
        ({"STORAGE_PROVIDER": "cf_images"}, ["CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"]),
        ({"STORAGE_PROVIDER": "r2", "R2_SECRET_ACCESS_KEY": "hush"}, ["R2_BUCKET"]),
    ],
)
def test_a_provider_without_its_settings_stops_the_uploader_with_one_line(
    env: dict[str, str], named: list[str]
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "PIXELBUS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pixelbus.storage_uploader"],
        env={**clean, "NATS_URL": "nats://127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pixelbus-storage-uploader: STORAGE_PROVIDER=")
    for name in named:
        assert name in lines[0]
    assert "hush" not in done.stderr
