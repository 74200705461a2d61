"""A refused start of the gateway is one line and exit code 2, as in every service."""

from __future__ import annotations

import os
import subprocess
import sys

from pixelbus.testkit.nats_server import NatsServer


def test_required_auth_without_a_key_stops_the_gateway_with_one_line(
    nats_server: NatsServer,
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIXELBUS_")}
    done = subprocess.run(
        [sys.executable, "-m", "pixelbus.gateway"],
        env={
            **clean,
            "NATS_URL": nats_server.url,
            "PIXELBUS_AUTH": "required",
            "PIXELBUS_PORT": "0",
            "PIXELBUS_LOG_LEVEL": "ERROR",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "pixelbus-gateway: PIXELBUS_AUTH=required but the keys bucket holds no active API "
        "key: create one with 'pixelbus keys create --name admin --owner ops --scope admin' "
        "(or start the development stack with './dev up --auth')"
    ]
