"""``pixelbus keys``: create prints a token that the gateway accepts; revoke refuses it."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from pixelbus.cli.app import main
from pixelbus.contracts.keys import hash_secret, parse_token
from pixelbus.runtime.keys import list_keys
from pixelbus.testkit.nats_server import NatsServer


async def test_create_list_revoke(
    nats_server: NatsServer, nc: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from pixelbus.runtime.provision import ensure
    from pixelbus.runtime.settings import BusSettings

    assert await asyncio.to_thread(main, ["keys", "--nats-url", nats_server.url, "list"]) == 1
    assert "no PIXELBUS_API_KEYS bucket yet" in capsys.readouterr().err
    await ensure(nc.jetstream(), BusSettings.from_env({"NATS_URL": nats_server.url}))
    url = ["--nats-url", nats_server.url, "--json"]
    create = [*url, "create", "--name", "ci", "--owner", "tenant-a", "--scope", "tasks:read"]
    assert await asyncio.to_thread(main, ["keys", *create]) == 0
    created = json.loads(capsys.readouterr().out)
    parsed = parse_token(created["token"])
    assert parsed is not None and parsed[0] == created["key_id"]
    (stored,) = await list_keys(nc.jetstream())
    assert (
        stored.secret_hash == hash_secret(parsed[1]) and created["token"] not in stored.secret_hash
    )
    assert (
        await asyncio.to_thread(
            main, ["keys", "--nats-url", nats_server.url, "revoke", created["key_id"]]
        )
        == 0
    )
    assert "revoked" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["keys", *url, "list"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["revoked_at"] is not None and row["owner"] == "tenant-a"
    bad = [
        "keys",
        "--nats-url",
        nats_server.url,
        "create",
        "--name",
        "x",
        "--owner",
        "a",
        "--scope",
        "root",
    ]
    assert await asyncio.to_thread(main, bad) == 2
    assert "scopes must be among" in capsys.readouterr().err


def test_unreachable_nats_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--nats-url", "nats://127.0.0.1:1", "list"]) == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in capsys.readouterr().err
