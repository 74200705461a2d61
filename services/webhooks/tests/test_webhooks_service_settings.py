"""The webhooks service refuses to start half-configured: one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.servers  # the webhooks service as a child process
def test_production_without_a_signing_secret_stops_the_webhooks_service() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELBUS_", "APP_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pixelbus.webhooks"],
        env={**clean, "NATS_URL": "nats://127.0.0.1:1", "APP_ENV": "production"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("pixelbus-webhooks: PIXELBUS_WEBHOOK_SECRET is required"), line
