"""Lease tokens for external consumers of ``/api/comm/task/fetch``.

A lease is the JetStream delivery of one task message. Its ack subject lets any gateway
replica ack, extend (in-progress) or nak the message, so the token carries it, signed
with the shared ``PIXELBUS_LEASE_SECRET`` so that a client can neither forge nor alter
it. The current lease of a task is also recorded in the leases KV bucket: when a lease
expires (no heartbeat within the consumer's AckWait) JetStream hands the task to someone
else, the record is overwritten, and the old token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import msgspec

__all__ = ["Lease", "LeaseError", "sign_lease", "verify_lease"]


class LeaseError(Exception):
    pass


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    #: New for each lease: the token of an earlier lease of the same task is refused.
    lease_id: str = msgspec.field(default_factory=lambda: secrets.token_hex(12))
    task_id: str
    reply: str
    attempt: int
    consumer: str
    environment: str
    workflow: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_lease(lease: Lease, secret: str) -> str:
    body = msgspec.json.encode(lease)
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify_lease(token: str, secret: str) -> Lease:
    try:
        body_text, mac_text = token.split(".", 1)
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, TypeError) as exc:
        raise LeaseError("malformed lease token") from exc
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise LeaseError("invalid lease token")
    try:
        return msgspec.json.decode(body, type=Lease)
    except msgspec.DecodeError as exc:
        raise LeaseError("malformed lease token") from exc
