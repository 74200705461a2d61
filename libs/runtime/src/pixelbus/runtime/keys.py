"""Managing API keys in the keys bucket (``pixelbus keys …``; the gateway only reads it).

The token is shown once, at creation; the bucket keeps its secret's hash only. Revoking
keeps the record (marked with the time), so ``list`` still shows who had which key.
"""

from __future__ import annotations

import secrets

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError

from pixelbus.contracts.errors import PixelbusError
from pixelbus.contracts.keys import SCOPES, ApiKey, format_token, hash_secret
from pixelbus.contracts.subjects import KEYS_BUCKET, sanitize_token
from pixelbus.runtime.clock import utcnow

__all__ = ["KeyManagementError", "create_key", "list_keys", "revoke_key"]


class KeyManagementError(PixelbusError):
    """A key operation that cannot be done (unknown scope, bad owner, no such key), with
    the reason for the operator; trying again as is cannot help."""

    code = "key_management"


async def create_key(
    js: JetStreamContext,
    *,
    name: str,
    owner: str,
    scopes: list[str],
    rate_per_s: float | None = None,
    max_active: int | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns its record and the token (shown once)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise KeyManagementError(
            f"scopes must be among {', '.join(SCOPES)} (got {', '.join(scopes)})"
        )
    if sanitize_token(owner) != owner:
        raise KeyManagementError(f"owner {owner!r}: use letters, digits, '-' and '_' only")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(
        key_id=key_id,
        name=name,
        owner=owner,
        scopes=tuple(dict.fromkeys(scopes)),
        secret_hash=hash_secret(secret),
        created_at=utcnow(),
        rate_per_s=rate_per_s,
        max_active=max_active,
    )
    kv = await js.key_value(KEYS_BUCKET)
    await kv.create(key_id, msgspec.json.encode(key))
    return key, format_token(key_id, secret)


async def list_keys(js: JetStreamContext) -> list[ApiKey]:
    kv = await js.key_value(KEYS_BUCKET)
    try:
        ids = await kv.keys()
    except NoKeysError:
        return []
    keys = []
    for key_id in ids:
        entry = await kv.get(key_id)
        if entry.value:
            keys.append(msgspec.json.decode(entry.value, type=ApiKey))
    return sorted(keys, key=lambda k: k.created_at)


async def revoke_key(js: JetStreamContext, key_id: str) -> ApiKey:
    """Mark the key revoked; every gateway refuses it from the next request on."""
    kv = await js.key_value(KEYS_BUCKET)
    try:
        entry = await kv.get(key_id)
    except KeyNotFoundError:
        raise KeyManagementError(f"no API key {key_id!r}") from None
    key = msgspec.json.decode(entry.value or b"", type=ApiKey)
    if key.revoked:
        return key
    revoked = msgspec.structs.replace(key, revoked_at=utcnow())
    await kv.update(key_id, msgspec.json.encode(revoked), last=entry.revision)
    return revoked
