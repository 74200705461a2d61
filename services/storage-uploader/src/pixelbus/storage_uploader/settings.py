"""Storage settings, built once from the environment by ``StorageSettings.from_env``.

The replaced system's names are kept (``STORAGE_PROVIDER``, ``R2_*``), the ecosystems' own
names are used where they exist (``GOOGLE_APPLICATION_CREDENTIALS``,
``STORAGE_EMULATOR_HOST``, ``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_API_TOKEN``); ours carry
the ``PIXELBUS_`` prefix. Only the chosen provider's settings are read (and its fallback's,
for ``cf_images``), and every problem with them is reported at once, in one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pixelbus.runtime import errors as runtime_errors
from pixelbus.runtime.settings import env_bool
from pixelbus.storage_uploader.errors import SettingsError

__all__ = [
    "DEFAULT_CACHE_CONTROL",
    "DEFAULT_CF_IMAGES_API_URL",
    "DEFAULT_GCS_API_URL",
    "DEFAULT_LOCAL_STORAGE_DIR",
    "DEFAULT_PART_SIZE",
    "DEFAULT_PUBLIC_BASE_URL",
    "DEFAULT_R2_TIMEOUT_S",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "MAX_URL_TTL_S",
    "MIN_PART_SIZE",
    "CfImagesSettings",
    "GcsSettings",
    "LocalSettings",
    "ProviderName",
    "R2Settings",
    "RetrySettings",
    "StorageSettings",
]

ProviderName = Literal["local", "r2", "gcs", "cf_images"]
_PROVIDERS: tuple[ProviderName, ...] = ("local", "r2", "gcs", "cf_images")

DEFAULT_LOCAL_STORAGE_DIR = ".pixelbus/storage"
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_R2_TIMEOUT_S = 30.0
DEFAULT_CACHE_CONTROL = "public, max-age=604800"
DEFAULT_GCS_API_URL = "https://storage.googleapis.com"
DEFAULT_CF_IMAGES_API_URL = "https://api.cloudflare.com/client/v4"
MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 (and R2) refuse smaller parts, except the last
DEFAULT_PART_SIZE = 8 * MIB
MAX_URL_TTL_S = 7 * 24 * 3600  # the longest a SigV4 / GOOG4 signed URL may live
# PIXELBUS_UPLOAD_CONCURRENCY's default: messages stored at once, and the connections an
# R2 client keeps for them
DEFAULT_UPLOAD_CONCURRENCY = 32

_REDACTED = "***"
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9-]{1,63}$")  # it becomes a host name label
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_VARIANT = re.compile(r"^[A-Za-z0-9_-]{1,99}$")


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """Files under ``directory``, served by the gateway at ``public_base_url/files/<key>``.

    ``fsync`` (``PIXELBUS_LOCAL_FSYNC``): flush each file to the disk before the task is
    completed, so a completed task's file survives a power loss or a kernel crash. Off by
    default: a file is still written whole and renamed into place (never half a file), and
    it survives the uploader's own crash; the page cache reaches the disk within seconds.
    """

    directory: Path
    public_base_url: str
    fsync: bool = False


@dataclass(frozen=True, kw_only=True)
class R2Settings:
    """Cloudflare R2 (S3 API). Without ``public_url`` the URLs are presigned GETs."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str
    public_url: str | None
    endpoint_url: str
    account_id: str | None = None
    timeout_s: float = DEFAULT_R2_TIMEOUT_S
    url_ttl_s: int = MAX_URL_TTL_S
    part_size: int = DEFAULT_PART_SIZE
    cache_control: str = DEFAULT_CACHE_CONTROL


@dataclass(frozen=True, kw_only=True)
class GcsSettings:
    """Google Cloud Storage (JSON API). Without ``public_url`` the URLs are V4-signed GETs.

    ``credentials_file`` unset means the metadata server (workload identity). ``api_url``
    is the JSON API's root (``STORAGE_EMULATOR_HOST`` points it at an emulator);
    ``emulator`` says whether it was. ``credentials`` is the parsed file (never logged).
    """

    bucket: str
    credentials_file: Path | None
    credentials: Mapping[str, Any] = field(default_factory=dict, repr=False)
    public_url: str | None = None
    api_url: str = DEFAULT_GCS_API_URL
    emulator: bool = False
    url_ttl_s: int = MAX_URL_TTL_S
    signer_email: str | None = None
    timeout_s: float = DEFAULT_R2_TIMEOUT_S
    cache_control: str = DEFAULT_CACHE_CONTROL


@dataclass(frozen=True, kw_only=True)
class CfImagesSettings:
    """Cloudflare Images; ``fallback`` takes the outputs that are not images (or none)."""

    account_id: str
    api_token: str = field(repr=False)
    variant: str = "public"
    api_url: str = DEFAULT_CF_IMAGES_API_URL
    fallback: ProviderName | None = None
    timeout_s: float = DEFAULT_R2_TIMEOUT_S


@dataclass(frozen=True, kw_only=True)
class RetrySettings:
    """In-process retries of a retryable failure, before JetStream's redelivery takes over.

    ``attempts`` tries in all; the waits double from ``base_s`` up to ``max_s``.
    """

    attempts: int = 3
    base_s: float = 0.5
    max_s: float = 8.0


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """The chosen provider and its settings (other providers' fields are ``None``, except a
    ``cf_images`` fallback's)."""

    provider: ProviderName
    local: LocalSettings | None = None
    r2: R2Settings | None = None
    gcs: GcsSettings | None = None
    cf_images: CfImagesSettings | None = None
    retry: RetrySettings = field(default_factory=RetrySettings)
    health_interval_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        """Read the settings; raises ``SettingsError`` naming every bad or missing one."""
        env = _Reader(environ)
        provider = _provider(env.get("STORAGE_PROVIDER") or "local")
        chosen: dict[str, Any] = {}
        cache_control = env.get("PIXELBUS_STORAGE_CACHE_CONTROL") or DEFAULT_CACHE_CONTROL
        if provider == "cf_images":
            cf = _cf_images(env)
            chosen["cf_images"] = cf
            if cf.fallback is not None:
                chosen[cf.fallback] = _READERS[cf.fallback](env, cache_control)
        else:
            chosen[provider] = _READERS[provider](env, cache_control)
        retry = RetrySettings(
            attempts=env.integer("PIXELBUS_STORAGE_RETRY_ATTEMPTS", 3, lo=1, hi=20),
            base_s=env.positive_float("PIXELBUS_STORAGE_RETRY_BASE_S", 0.5),
            max_s=env.positive_float("PIXELBUS_STORAGE_RETRY_MAX_S", 8.0),
        )
        health_interval_s = env.positive_float("PIXELBUS_STORAGE_HEALTH_INTERVAL_S", 30.0)
        env.raise_problems(provider)
        return cls(provider=provider, retry=retry, health_interval_s=health_interval_s, **chosen)

    def redacted(self) -> dict[str, str]:
        """The effective settings by environment name, secrets masked, for the start log."""
        out: dict[str, str] = {"STORAGE_PROVIDER": self.provider}
        if self.local is not None:
            out["PIXELBUS_LOCAL_STORAGE_DIR"] = str(self.local.directory)
            out["PIXELBUS_PUBLIC_BASE_URL"] = self.local.public_base_url
            out["PIXELBUS_LOCAL_FSYNC"] = str(self.local.fsync).lower()
        if self.r2 is not None:
            out["R2_ACCOUNT_ID"] = self.r2.account_id or ""
            out["R2_ACCESS_KEY_ID"] = _mask(self.r2.access_key_id)
            out["R2_SECRET_ACCESS_KEY"] = _REDACTED
            out["R2_BUCKET"] = self.r2.bucket
            out["R2_PUBLIC_URL"] = self.r2.public_url or "(unset: presigned URLs)"
            out["PIXELBUS_R2_ENDPOINT_URL"] = self.r2.endpoint_url
            out["PIXELBUS_R2_TIMEOUT_S"] = str(self.r2.timeout_s)
            out["PIXELBUS_R2_URL_TTL_S"] = str(self.r2.url_ttl_s)
            out["PIXELBUS_R2_PART_SIZE"] = str(self.r2.part_size)
        if self.gcs is not None:
            out["PIXELBUS_GCS_BUCKET"] = self.gcs.bucket
            out["GOOGLE_APPLICATION_CREDENTIALS"] = str(
                self.gcs.credentials_file or "(unset: metadata server)"
            )
            out["PIXELBUS_GCS_PUBLIC_URL"] = self.gcs.public_url or "(unset: signed URLs)"
            out["PIXELBUS_GCS_URL_TTL_S"] = str(self.gcs.url_ttl_s)
            if self.gcs.emulator:
                out["STORAGE_EMULATOR_HOST"] = self.gcs.api_url
        if self.cf_images is not None:
            out["CLOUDFLARE_ACCOUNT_ID"] = self.cf_images.account_id
            out["CLOUDFLARE_API_TOKEN"] = _REDACTED
            out["PIXELBUS_CF_IMAGES_VARIANT"] = self.cf_images.variant
            out["PIXELBUS_CF_IMAGES_API_URL"] = self.cf_images.api_url
            out["PIXELBUS_CF_IMAGES_FALLBACK"] = self.cf_images.fallback or "none"
        out["PIXELBUS_STORAGE_RETRY_ATTEMPTS"] = str(self.retry.attempts)
        return out


def _provider(value: str) -> ProviderName:
    name = value.lower()
    for available in _PROVIDERS:
        if name == available:
            return available
    choices = ", ".join(_PROVIDERS)
    raise SettingsError(
        f"STORAGE_PROVIDER={value!r} is not one of {choices}", settings=("STORAGE_PROVIDER",)
    )


def _local(env: _Reader, cache_control: str) -> LocalSettings:
    return LocalSettings(
        directory=Path(env.get("PIXELBUS_LOCAL_STORAGE_DIR") or DEFAULT_LOCAL_STORAGE_DIR),
        public_base_url=env.url("PIXELBUS_PUBLIC_BASE_URL", default=DEFAULT_PUBLIC_BASE_URL),
        fsync=env.boolean("PIXELBUS_LOCAL_FSYNC", default=False),
    )


def _r2(env: _Reader, cache_control: str) -> R2Settings:
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
        public_url=env.url("R2_PUBLIC_URL", default="") or None,
        endpoint_url=endpoint_url,
        timeout_s=env.positive_float("PIXELBUS_R2_TIMEOUT_S", DEFAULT_R2_TIMEOUT_S),
        url_ttl_s=env.integer("PIXELBUS_R2_URL_TTL_S", MAX_URL_TTL_S, lo=1, hi=MAX_URL_TTL_S),
        part_size=env.integer(
            "PIXELBUS_R2_PART_SIZE", DEFAULT_PART_SIZE, lo=MIN_PART_SIZE, hi=5 * 1024 * MIB
        ),
        cache_control=cache_control,
    )


def _gcs(env: _Reader, cache_control: str) -> GcsSettings:
    bucket = env.require("PIXELBUS_GCS_BUCKET")
    if bucket and not _BUCKET.match(bucket):
        env.invalid("PIXELBUS_GCS_BUCKET", f"PIXELBUS_GCS_BUCKET={bucket!r} is not a bucket name")
    credentials_file = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    credentials: dict[str, Any] = {}
    if credentials_file is not None:
        credentials = _credentials(env, credentials_file)
    emulator = env.url("STORAGE_EMULATOR_HOST", default="")
    public_url = env.url("PIXELBUS_GCS_PUBLIC_URL", default="") or None
    signer_email = env.get("PIXELBUS_GCS_SIGNER_EMAIL")
    has_key = bool(credentials.get("private_key") and credentials.get("client_email"))
    unreadable = credentials_file is not None and not credentials  # already reported
    if public_url is None and not has_key and signer_email is None and not unreadable:
        # signed URLs need a key: the file's, or IAM signBlob as a named service account
        env.missing(
            "PIXELBUS_GCS_SIGNER_EMAIL",
            "PIXELBUS_GCS_PUBLIC_URL (or a service-account key in "
            "GOOGLE_APPLICATION_CREDENTIALS, or PIXELBUS_GCS_SIGNER_EMAIL, to sign URLs)",
        )
    return GcsSettings(
        bucket=bucket,
        credentials_file=Path(credentials_file) if credentials_file else None,
        credentials=credentials,
        public_url=public_url,
        api_url=emulator or DEFAULT_GCS_API_URL,
        emulator=bool(emulator),
        url_ttl_s=env.integer("PIXELBUS_GCS_URL_TTL_S", MAX_URL_TTL_S, lo=1, hi=MAX_URL_TTL_S),
        signer_email=signer_email,
        timeout_s=env.positive_float("PIXELBUS_GCS_TIMEOUT_S", DEFAULT_R2_TIMEOUT_S),
        cache_control=cache_control,
    )


def _credentials(env: _Reader, path: str) -> dict[str, Any]:
    """The credentials file's JSON; a file that cannot be read or parsed is a bad setting."""
    name = "GOOGLE_APPLICATION_CREDENTIALS"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        env.invalid(name, f"{name}={path!r} cannot be read ({reason})")
        return {}
    if not isinstance(data, dict) or "type" not in data:
        env.invalid(name, f"{name}={path!r} is not a Google credentials file (no 'type')")
        return {}
    return data


def _cf_images(env: _Reader) -> CfImagesSettings:
    account_id = env.require("CLOUDFLARE_ACCOUNT_ID")
    if account_id and not _ACCOUNT_ID.match(account_id):
        env.invalid(
            "CLOUDFLARE_ACCOUNT_ID",
            f"CLOUDFLARE_ACCOUNT_ID={account_id!r} is not a Cloudflare account id",
        )
    variant = env.get("PIXELBUS_CF_IMAGES_VARIANT") or "public"
    if not _VARIANT.match(variant):
        env.invalid(
            "PIXELBUS_CF_IMAGES_VARIANT",
            f"PIXELBUS_CF_IMAGES_VARIANT={variant!r} is not a variant name",
        )
    fallback_name = (env.get("PIXELBUS_CF_IMAGES_FALLBACK") or "none").lower()
    fallback: ProviderName | None = None
    if fallback_name != "none":
        fallback = next((p for p in _PROVIDERS if p == fallback_name and p != "cf_images"), None)
        if fallback is None:
            env.invalid(
                "PIXELBUS_CF_IMAGES_FALLBACK",
                f"PIXELBUS_CF_IMAGES_FALLBACK={fallback_name!r} is not one of none, local, r2, gcs",
            )
    return CfImagesSettings(
        account_id=account_id,
        api_token=env.require("CLOUDFLARE_API_TOKEN"),
        variant=variant,
        api_url=env.url("PIXELBUS_CF_IMAGES_API_URL", default=DEFAULT_CF_IMAGES_API_URL),
        fallback=fallback,
        timeout_s=env.positive_float("PIXELBUS_CF_IMAGES_TIMEOUT_S", DEFAULT_R2_TIMEOUT_S),
    )


_READERS = {"local": _local, "r2": _r2, "gcs": _gcs}


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
            self.invalid(name, f"{name}={value!r} is not a positive number")
            return default
        return number

    def boolean(self, name: str, *, default: bool) -> bool:
        try:
            return env_bool(self._environ, name, default)
        except runtime_errors.SettingsError as exc:
            self.invalid(name, str(exc))
            return default

    def integer(self, name: str, default: int, *, lo: int, hi: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = lo - 1
        if not lo <= number <= hi:
            self.invalid(name, f"{name}={value!r} is not an integer in [{lo}, {hi}]")
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
