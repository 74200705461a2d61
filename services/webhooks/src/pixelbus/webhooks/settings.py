"""Webhook settings from the environment (secrets never logged)."""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from pixelbus.contracts.webhooks import decode_secret
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import (
    BusSettings,
    Networks,
    Reader,
    Settings,
    integer,
    networks,
    number,
    section,
    setting,
)

__all__ = ["WebhookSettings", "WebhooksProcessSettings"]


def _random_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked(name: str, secret: str) -> str:
    try:
        decode_secret(secret)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return secret


def _owner_secrets(name: str, raw: str) -> Mapping[str, str]:
    owners: dict[str, str] = {}
    for item in raw.split(","):
        owner, sep, value = item.strip().partition("=")
        if item.strip() and (not sep or not owner):
            raise SettingsError(f"{name}: expected owner=whsec_…,…")
        if item.strip():
            owners[owner] = _checked(f"{name} ({owner})", value)
    return owners


@dataclass(frozen=True)
class WebhookSettings(Settings):
    secret: str = setting(
        "PIXELBUS_WEBHOOK_SECRET", "", _checked, secret=True, factory=_random_secret
    )
    """`whsec_<base64>`: signs webhooks (Standard Webhooks); required in production, unset a random
    one per process; read by the webhooks service, as are all `PIXELBUS_WEBHOOK_*`"""
    owner_secrets: Mapping[str, str] = setting(
        "PIXELBUS_WEBHOOK_SECRETS", {}, _owner_secrets, secret=True, factory=dict
    )
    """per API client (tenant) secrets: `owner=whsec_…,owner2=whsec_…`"""
    secret_generated: bool = False
    max_attempts: int = setting("PIXELBUS_WEBHOOK_MAX_ATTEMPTS", 8, integer(1, 100))
    """attempts of a webhook delivery"""
    backoff_s: float = setting("PIXELBUS_WEBHOOK_BACKOFF_S", 5.0, number(0.01, 86400))
    """first wait before a webhook is sent again; waits double up to the max"""
    backoff_max_s: float = setting("PIXELBUS_WEBHOOK_BACKOFF_MAX_S", 3600.0, number(0.01, 86400))
    """longest wait between two attempts"""
    timeout_s: float = setting("PIXELBUS_WEBHOOK_TIMEOUT_S", 10.0, number(0.1, 300))
    """timeout of one attempt"""
    concurrency: int = setting("PIXELBUS_WEBHOOK_CONCURRENCY", 16, integer(1, 1000))
    """deliveries a webhooks replica makes at once"""
    allow_networks: Networks = setting("PIXELBUS_SSRF_ALLOW_NETWORKS", (), networks(strict=False))
    """CIDRs the SSRF guard lets a delivery reach (development only)"""

    def secret_for(self, owner: str | None) -> str:
        return self.owner_secrets.get(owner or "", self.secret)

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        generated = reader.get("PIXELBUS_WEBHOOK_SECRET") is None
        if generated and reader.get("APP_ENV") == "production":
            reader.refuse(
                "PIXELBUS_WEBHOOK_SECRET",
                "PIXELBUS_WEBHOOK_SECRET is required when APP_ENV=production "
                "(whsec_<base64>, signs the webhooks)",
            )
        return reader.fields(cls, secret_generated=generated)


@dataclass(frozen=True)
class WebhooksProcessSettings(Settings):
    """The webhooks process: the bus and the deliveries."""

    bus: BusSettings = section(BusSettings)
    webhooks: WebhookSettings = section(WebhookSettings)
