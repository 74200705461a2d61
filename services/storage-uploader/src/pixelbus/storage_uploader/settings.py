"""Storage settings, built once from the environment by ``StorageSettings.from_env``.

The replaced system's names are kept (``STORAGE_PROVIDER``, ``R2_*``); ours carry the
``PIXELBUS_`` prefix. Only the chosen provider's settings are read, and every problem with
them is reported at once, in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pixelbus.storage_uploader.errors import SettingsError

__all__ = [
    "DEFAULT_LOCAL_STORAGE_DIR",
    "DEFAULT_PUBLIC_BASE_URL",
    "DEFAULT_R2_TIMEOUT_S",
    "LocalSettings",
    "ProviderName",
    "R2Settings",
    "StorageSettings",
]

ProviderName = Literal["local", "r2"]
_AVAILABLE: tuple[ProviderName, ...] = ("local", "r2")
_NOT_YET = ("gcs", "cf_images")  # the replaced system's other providers

DEFAULT_LOCAL_STORAGE_DIR = ".pixelbus/storage"
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_R2_TIMEOUT_S = 30.0

_REDACTED = "***"
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9-]{1,63}$")  # it becomes a host name label


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """Files under ``directory``, served by the gateway at ``public_base_url/files/<key>``."""

    directory: Path
    public_base_url: str


@dataclass(frozen=True, kw_only=True)
class R2Settings:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str
    public_url: str
    endpoint_url: str
    account_id: str | None = None
    timeout_s: float = DEFAULT_R2_TIMEOUT_S


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """The chosen provider and its settings (the other provider's field is ``None``)."""

    provider: ProviderName
    local: LocalSettings | None = None
    r2: R2Settings | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        """Read the settings; raises ``SettingsError`` naming every bad or missing one."""
        env = _Reader(environ)
        provider = _provider(env.get("STORAGE_PROVIDER") or "local")
        if provider == "local":
            settings = cls(provider=provider, local=_local(env))
        else:
            settings = cls(provider=provider, r2=_r2(env))
        env.raise_problems(provider)
        return settings

    def redacted(self) -> dict[str, str]:
        """The effective settings by environment name, secrets masked, for the start log."""
        out: dict[str, str] = {"STORAGE_PROVIDER": self.provider}
        if self.local is not None:
            out["PIXELBUS_LOCAL_STORAGE_DIR"] = str(self.local.directory)
            out["PIXELBUS_PUBLIC_BASE_URL"] = self.local.public_base_url
        if self.r2 is not None:
            out["R2_ACCOUNT_ID"] = self.r2.account_id or ""
            out["R2_ACCESS_KEY_ID"] = _mask(self.r2.access_key_id)
            out["R2_SECRET_ACCESS_KEY"] = _REDACTED
            out["R2_BUCKET"] = self.r2.bucket
            out["R2_PUBLIC_URL"] = self.r2.public_url
            out["PIXELBUS_R2_ENDPOINT_URL"] = self.r2.endpoint_url
            out["PIXELBUS_R2_TIMEOUT_S"] = str(self.r2.timeout_s)
        return out


def _provider(value: str) -> ProviderName:
    name = value.lower()
    for available in _AVAILABLE:
        if name == available:
            return available
    if name in _NOT_YET:
        raise SettingsError(
            f"STORAGE_PROVIDER={name!r} is not available yet in pixelbus; use local or r2",
            settings=("STORAGE_PROVIDER",),
        )
    choices = ", ".join((*_AVAILABLE, *_NOT_YET))
    raise SettingsError(
        f"STORAGE_PROVIDER={value!r} is not one of {choices}", settings=("STORAGE_PROVIDER",)
    )


def _local(env: _Reader) -> LocalSettings:
    return LocalSettings(
        directory=Path(env.get("PIXELBUS_LOCAL_STORAGE_DIR") or DEFAULT_LOCAL_STORAGE_DIR),
        public_base_url=env.url("PIXELBUS_PUBLIC_BASE_URL", default=DEFAULT_PUBLIC_BASE_URL),
    )


def _r2(env: _Reader) -> R2Settings:
    endpoint_url = env.url("PIXELBUS_R2_ENDPOINT_URL", default="")
    account_id = env.get("R2_ACCOUNT_ID")
    if account_id is not None and not _ACCOUNT_ID.match(account_id):
        env.invalid("R2_ACCOUNT_ID", f"R2_ACCOUNT_ID={account_id!r} is not a Cloudflare account id")
    elif account_id is None and not endpoint_url:
        env.missing("R2_ACCOUNT_ID", "R2_ACCOUNT_ID (or PIXELBUS_R2_ENDPOINT_URL)")
    if not endpoint_url and account_id is not None:
        endpoint_url = f"https://{account_id}.r2.cloudflarestorage.com"
    return R2Settings(
        account_id=account_id,
        access_key_id=env.require("R2_ACCESS_KEY_ID"),
        secret_access_key=env.require("R2_SECRET_ACCESS_KEY"),
        bucket=env.require("R2_BUCKET"),
        public_url=env.url("R2_PUBLIC_URL"),
        endpoint_url=endpoint_url,
        timeout_s=env.positive_float("PIXELBUS_R2_TIMEOUT_S", DEFAULT_R2_TIMEOUT_S),
    )


def _mask(value: str) -> str:
    """Keep the last four characters of a long identifier, so operators can tell keys apart."""
    return f"{_REDACTED}{value[-4:]}" if len(value) >= 12 else _REDACTED


class _Reader:
    """Reads settings and collects every problem, so that one error names them all."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._missing: list[tuple[str, str]] = []
        self._invalid: list[tuple[str, str]] = []

    def get(self, name: str) -> str | None:
        """The stripped value, or ``None`` when unset or blank (``R2_BUCKET=`` means unset)."""
        value = self._environ.get(name, "").strip()
        return value or None

    def missing(self, name: str, label: str | None = None) -> None:
        self._missing.append((name, label or name))

    def invalid(self, name: str, message: str) -> None:
        self._invalid.append((name, message))

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            self.missing(name)
        return value or ""

    def url(self, name: str, *, default: str | None = None) -> str:
        """An http(s) URL without its trailing slash; required unless ``default`` is given."""
        value = self.get(name)
        if value is None:
            if default is None:
                self.missing(name)
            return default or ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.invalid(name, f"{name}={value!r} is not an http(s) URL")
        return value.rstrip("/")

    def positive_float(self, name: str, default: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not number > 0:
            self.invalid(name, f"{name}={value!r} is not a positive number of seconds")
            return default
        return number

    def raise_problems(self, provider: str) -> None:
        problems = []
        if self._missing:
            labels = ", ".join(label for _, label in self._missing)
            problems.append(f"STORAGE_PROVIDER={provider} needs {labels} (missing)")
        problems.extend(message for _, message in self._invalid)
        if problems:
            names = tuple(name for name, _ in (*self._missing, *self._invalid))
            raise SettingsError("; ".join(problems), settings=names)
