"""``./dev up --auth``: the stack's first admin key, created once in its own NATS."""

from __future__ import annotations

import asyncio

import nats
from tools.devstack import first_admin_token

from pixelbus.contracts.keys import ADMIN, ApiKey, parse_token, secret_matches
from pixelbus.runtime.keys import list_keys, revoke_key
from pixelbus.testkit.nats_server import NatsServer


async def keys_of(url: str) -> list[ApiKey]:
    nc = await nats.connect(url)
    try:
        return await list_keys(nc.jetstream())
    finally:
        await nc.close()


async def revoke(url: str, key_id: str) -> None:
    nc = await nats.connect(url)
    try:
        await revoke_key(nc.jetstream(), key_id)
    finally:
        await nc.close()


def test_first_admin_key_is_created_once_and_again_after_a_revoke(
    nats_server: NatsServer,
) -> None:
    token = first_admin_token(nats_server.url)
    assert token is not None
    parsed = parse_token(token)
    assert parsed is not None
    [key] = asyncio.run(keys_of(nats_server.url))
    assert key.key_id == parsed[0] and secret_matches(parsed[1], key.secret_hash)
    assert ADMIN in key.scopes and not key.revoked

    assert first_admin_token(nats_server.url) is None  # an active key exists: none made
    assert len(asyncio.run(keys_of(nats_server.url))) == 1

    asyncio.run(revoke(nats_server.url, key.key_id))
    again = first_admin_token(nats_server.url)  # no active key left: a new one
    assert again is not None and again != token
