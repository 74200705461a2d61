"""Webhook settings from the environment (secrets never logged)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelbus.contracts.webhooks import decode_secret
from pixelbus.media.ssrf import IPNetwork
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import env_float, env_int, env_networks

__all__ = ["WebhookSettings"]


def _random_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked(name: str, secret: str) -> str:
    try:
        decode_secret(secret)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return secret


@dataclass(frozen=True)
class WebhookSettings:
    #: The global signing secret (``PIXELBUS_WEBHOOK_SECRET``, ``whsec_<base64>``).
    secret: str = field(default_factory=_random_secret, repr=False)
    #: Per API client (tenant) secrets: ``PIXELBUS_WEBHOOK_SECRETS=owner=whsec_…,…``.
    owner_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret_generated: bool = False
    max_attempts: int = 8
    backoff_s: float = 5.0
    backoff_max_s: float = 3600.0
    timeout_s: float = 10.0
    concurrency: int = 16
    allow_networks: tuple[IPNetwork, ...] = ()

    def secret_for(self, owner: str | None) -> str:
        return self.owner_secrets.get(owner or "", self.secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSettings:
        raw = environ.get("PIXELBUS_WEBHOOK_SECRET", "")
        if not raw and environ.get("APP_ENV") == "production":
            raise SettingsError(
                "PIXELBUS_WEBHOOK_SECRET is required when APP_ENV=production "
                "(whsec_<base64>, signs the webhooks)"
            )
        owners: dict[str, str] = {}
        for item in environ.get("PIXELBUS_WEBHOOK_SECRETS", "").split(","):
            if not item.strip():
                continue
            owner, sep, value = item.strip().partition("=")
            if not sep or not owner:
                raise SettingsError("PIXELBUS_WEBHOOK_SECRETS: expected owner=whsec_…,…")
            owners[owner] = _checked(f"PIXELBUS_WEBHOOK_SECRETS ({owner})", value)
        return cls(
            secret=_checked("PIXELBUS_WEBHOOK_SECRET", raw) if raw else _random_secret(),
            owner_secrets=owners,
            secret_generated=not raw,
            max_attempts=env_int(environ, "PIXELBUS_WEBHOOK_MAX_ATTEMPTS", 8, lo=1, hi=100),
            backoff_s=env_float(environ, "PIXELBUS_WEBHOOK_BACKOFF_S", 5.0, lo=0.01, hi=86400),
            backoff_max_s=env_float(
                environ, "PIXELBUS_WEBHOOK_BACKOFF_MAX_S", 3600.0, lo=0.01, hi=86400
            ),
            timeout_s=env_float(environ, "PIXELBUS_WEBHOOK_TIMEOUT_S", 10.0, lo=0.1, hi=300),
            concurrency=env_int(environ, "PIXELBUS_WEBHOOK_CONCURRENCY", 16, lo=1, hi=1000),
            allow_networks=env_networks(environ, "PIXELBUS_SSRF_ALLOW_NETWORKS", strict=False),
        )

    def redacted(self) -> dict[str, Any]:
        return {
            "secret": "(generated)" if self.secret_generated else "***",
            "owner_secrets": sorted(self.owner_secrets),
            "max_attempts": self.max_attempts,
            "backoff_s": self.backoff_s,
            "backoff_max_s": self.backoff_max_s,
            "timeout_s": self.timeout_s,
            "allow_networks": [str(n) for n in self.allow_networks],
        }
