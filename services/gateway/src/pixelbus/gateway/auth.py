"""Who is calling: API keys from the keys bucket, scopes, and the open development mode.

``KeyStore`` mirrors the keys bucket in memory through a KV watch, so every gateway
replica sees a new or revoked key within milliseconds and a request costs no NATS round
trip to authenticate. ``require(scope)`` is the route dependency: it answers 401 without
a valid key, 403 when the key lacks the scope, 429 past the key's request rate, and
otherwise hands the route a ``Principal`` (the key's owner is the tenant whose tasks it
may see).

With ``PIXELBUS_AUTH=open`` (the default outside production, for the quickstart) a request
without a key acts as the ``anonymous`` tenant with every scope; a request with a key is
still checked, so keys behave the same in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import structlog
from fastapi import Header, HTTPException, Request
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from pixelbus.contracts.keys import ADMIN, SCOPES, ApiKey, parse_token, secret_matches
from pixelbus.contracts.subjects import KEYS_BUCKET
from pixelbus.gateway.responses import error
from pixelbus.runtime.quotas import ANONYMOUS

if TYPE_CHECKING:
    from pixelbus.gateway.deps import Gateway

__all__ = ["ANONYMOUS", "AUTH_RESPONSES", "KeyStore", "Principal", "authorize", "require"]

log = structlog.get_logger("pixelbus.auth")


@dataclass(frozen=True)
class Principal:
    owner: str
    scopes: frozenset[str]
    key_id: str | None = None
    rate_per_s: float | None = None
    max_active: int | None = None

    def may(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    @property
    def sees_all(self) -> bool:
        """Whether this caller sees every tenant's tasks (an admin)."""
        return ADMIN in self.scopes

    def sees(self, owner: str | None) -> bool:
        """May this caller see a task of ``owner``? (Admins see every tenant's.)"""
        return ADMIN in self.scopes or (owner or ANONYMOUS) == self.owner


OPEN_PRINCIPAL = Principal(owner=ANONYMOUS, scopes=frozenset(SCOPES))  # open mode: all of it


class KeyStore:
    """The keys bucket, mirrored in memory by a watch."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self, js: JetStreamContext) -> None:
        kv = await js.key_value(KEYS_BUCKET)
        self._task = asyncio.create_task(self._follow(kv))
        await asyncio.wait_for(self._loaded.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def active_keys(self) -> int:
        return sum(1 for key in self._keys.values() if not key.revoked)

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    async def _follow(self, kv: KeyValue) -> None:
        while True:
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        # nats-py's "initial values are all in" marker can come before
                        # the values themselves (its consumer-info check races the
                        # first deliveries), so it counts only for an empty bucket; the
                        # entry with nothing left pending marks a full load otherwise.
                        if (await kv.status()).values == 0:
                            self._loaded.set()
                        continue
                    if entry.value:
                        try:
                            self._keys[entry.key] = msgspec.json.decode(entry.value, type=ApiKey)
                        except msgspec.DecodeError:
                            log.error("unreadable API key record ignored", key_id=entry.key)
                    else:  # deleted or purged
                        self._keys.pop(entry.key, None)
                    if entry.delta == 0:
                        self._loaded.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: watch again
                log.warning("keys watch failed; restarting", error=str(exc))
                await asyncio.sleep(1)

    def authenticate(self, authorization: str | None, *, open_mode: bool) -> Principal:
        """The caller, or ``HTTPException(401)``."""
        if not authorization:
            if open_mode:
                return OPEN_PRINCIPAL
            raise _unauthorized("an API key is required: Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        parsed = parse_token(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise _unauthorized("the Authorization header is not 'Bearer <pixelbus API key>'")
        key = self._keys.get(parsed[0])
        if key is None or not secret_matches(parsed[1], key.secret_hash):
            raise _unauthorized("unknown API key")
        if key.revoked:
            raise _unauthorized("this API key was revoked")
        return Principal(
            owner=key.owner,
            scopes=frozenset(key.scopes),
            key_id=key.key_id,
            rate_per_s=key.rate_per_s,
            max_active=key.max_active,
        )


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """Route dependency: a caller holding ``scope``, within its request rate."""

    async def dependency(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        return await authorize(request.app.state.gateway, authorization, scope)

    return dependency


async def authorize(gw: Gateway, authorization: str | None, scope: str) -> Principal:
    """The caller of a request with this ``Authorization`` header, holding ``scope`` and
    within its request rate; ``HTTPException`` 401, 403 or 429 otherwise."""
    principal: Principal = gw.keys.authenticate(authorization, open_mode=gw.settings.auth_open)
    if not principal.may(scope):
        raise HTTPException(403, f"this API key lacks the {scope!r} scope")
    await gw.rates.check(principal)
    return principal


#: The answers every protected route may give, for its OpenAPI ``responses``.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: error("no API key, an unknown one, or a revoked one"),
    403: error("the API key lacks the scope this endpoint needs"),
    429: error("over the key's request rate (`Retry-After`) or active-task quota"),
}
