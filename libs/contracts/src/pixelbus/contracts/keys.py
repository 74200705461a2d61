"""API keys: the stored record, the token format and the scopes (pure, no I/O).

A token is ``pbk_<key id>_<secret>``: the key id (12 hex characters) finds the record,
the secret (43 URL-safe characters, 256 bits) proves it. Only the secret's SHA-256 is
stored, so a leaked bucket gives no usable token (the secret's entropy makes a slow hash
unnecessary).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime

import msgspec

__all__ = [
    "ADMIN",
    "CONSUMER",
    "SCOPES",
    "TASKS_READ",
    "TASKS_WRITE",
    "ApiKey",
    "format_token",
    "hash_secret",
    "parse_token",
    "secret_matches",
]

TASKS_WRITE = "tasks:write"
TASKS_READ = "tasks:read"
CONSUMER = "consumer"
ADMIN = "admin"
SCOPES = (TASKS_WRITE, TASKS_READ, CONSUMER, ADMIN)

_TOKEN = re.compile(r"^pbk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """One API key as kept in the keys bucket (key: ``key_id``)."""

    key_id: str
    name: str
    owner: str
    scopes: tuple[str, ...]
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
    #: Per-key overrides of the gateway's defaults (``None``: the default).
    rate_per_s: float | None = None
    max_active: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def format_token(key_id: str, secret: str) -> str:
    return f"pbk_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed token, else ``None``."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
