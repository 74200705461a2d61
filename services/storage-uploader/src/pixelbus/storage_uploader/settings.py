"""Storage settings, built once from the environment by ``StorageSettings.from_env``.

The replaced system's names are kept (``STORAGE_PROVIDER``, ``R2_*``), the ecosystems' own
names are used where they exist (``GOOGLE_APPLICATION_CREDENTIALS``,
``STORAGE_EMULATOR_HOST``, ``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_API_TOKEN``); ours carry
the ``PIXELBUS_`` prefix. Only the chosen provider's settings are read (and its fallback's,
for ``cf_images``), and every problem with them is reported at once, in one line.
"""

# ruff: noqa: RUF009 -- setting() and section() make dataclass fields

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, cast

from pixelbus.runtime.settings import (
    REQUIRED,
    BusSettings,
    Reader,
    Settings,
    boolean,
    http_url,
    integer,
    matching,
    one_of,
    path,
    section,
    setting,
)
from pixelbus.storage_uploader.errors import SettingsError

__all__ = [
    "DEFAULT_CACHE_CONTROL",
    "DEFAULT_PUBLIC_BASE_URL",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "MIN_PART_SIZE",
    "CfImagesSettings",
    "GcsSettings",
    "LocalSettings",
    "ProviderName",
    "R2Settings",
    "RetrySettings",
    "StorageSettings",
    "UploaderSettings",
]

ProviderName = Literal["local", "r2", "gcs", "cf_images"]
_PROVIDERS: tuple[ProviderName, ...] = ("local", "r2", "gcs", "cf_images")

DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_CACHE_CONTROL = "public, max-age=604800"
MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 (and R2) refuse smaller parts, except the last
_TTL_S = 7 * 24 * 3600  # the longest a SigV4 / GOOG4 signed URL may live
# PIXELBUS_UPLOAD_CONCURRENCY's default: messages stored at once, and the connections an
# R2 client keeps for them
DEFAULT_UPLOAD_CONCURRENCY = 32

_ACCOUNT_ID = matching(r"[A-Za-z0-9-]{1,63}", "a Cloudflare account id")  # a host label


def _provider(name: str, raw: str) -> ProviderName:
    return cast(ProviderName, one_of(*_PROVIDERS, lower=True)(name, raw))


def _fallback(name: str, raw: str) -> ProviderName | None:
    choice = one_of("none", "local", "r2", "gcs", lower=True)(name, raw)
    return None if choice == "none" else cast(ProviderName, choice)


def _url(name: str, raw: str) -> str:
    """An http(s) URL without its trailing slash."""
    return http_url(name, raw).rstrip("/")


def _positive(name: str, raw: str) -> float:
    try:
        number = float(raw)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise SettingsError(f"{name}={raw!r} is not a positive number")
    return number


def _integer(lo: int, hi: int) -> Any:
    def parse(name: str, raw: str) -> int:
        try:
            number = int(raw)
        except ValueError:
            number = lo - 1
        if not lo <= number <= hi:
            raise SettingsError(f"{name}={raw!r} is not an integer in [{lo}, {hi}]")
        return number

    return parse


def _mask(value: str) -> str:
    """Keep the last four characters of a long identifier, so operators can tell keys apart."""
    return f"***{value[-4:]}" if len(value) >= 12 else "***"


_TTL = _integer(1, _TTL_S)


@dataclass(frozen=True, kw_only=True)
class LocalSettings(Settings):
    """Files under ``directory``, served by the gateway at ``public_base_url/files/<key>``."""

    directory: Path = setting("PIXELBUS_LOCAL_STORAGE_DIR", Path(".pixelbus/storage"), path)
    """where `local` storage writes"""
    public_base_url: str = setting("PIXELBUS_PUBLIC_BASE_URL", DEFAULT_PUBLIC_BASE_URL, _url)
    """base of `local` output URLs"""
    fsync: bool = setting("PIXELBUS_LOCAL_FSYNC", False, boolean)
    """`true`: `local` storage syncs each file to the disk before its task is reported done, so
    it survives a power loss (see *The task path*)"""


@dataclass(frozen=True, kw_only=True)
class R2Settings(Settings):
    """Cloudflare R2 (S3 API). Without ``public_url`` the URLs are presigned GETs."""

    access_key_id: str = setting("R2_ACCESS_KEY_ID", REQUIRED, show=_mask)
    """R2 access key id (required with `r2`)"""
    secret_access_key: str = setting("R2_SECRET_ACCESS_KEY", REQUIRED, secret=True)
    """R2 secret (required with `r2`)"""
    bucket: str = setting("R2_BUCKET", REQUIRED)
    """R2 bucket (required with `r2`)"""
    public_url: str | None = setting(
        "R2_PUBLIC_URL", None, _url, default_doc="unset: presigned URLs"
    )
    """public base URL of the bucket (custom domain); unset, output URLs are presigned GETs"""
    endpoint_url: str = setting("PIXELBUS_R2_ENDPOINT_URL", "", _url)
    """S3 endpoint override (unset: `https://<account>.r2.cloudflarestorage.com`)"""
    account_id: str | None = setting("R2_ACCOUNT_ID", None, _ACCOUNT_ID)
    """Cloudflare account of the bucket (required with `r2` unless the endpoint is set)"""
    timeout_s: float = setting("PIXELBUS_R2_TIMEOUT_S", 30.0, _positive)
    """connect and read timeout of R2 requests"""
    url_ttl_s: int = setting("PIXELBUS_R2_URL_TTL_S", _TTL_S, _TTL)
    """lifetime of signed URLs (7 days at most, as SigV4 and GOOG4 allow)"""
    part_size: int = setting(
        "PIXELBUS_R2_PART_SIZE", 8 * MIB, _integer(MIN_PART_SIZE, 5 * 1024 * MIB)
    )
    """multipart part size (at least 5 MiB); outputs larger than one part are uploaded in parts"""
    cache_control: str = setting("PIXELBUS_STORAGE_CACHE_CONTROL", DEFAULT_CACHE_CONTROL)
    """`Cache-Control` of stored objects (r2, gcs)"""

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        account, endpoint = reader.get("R2_ACCOUNT_ID"), reader.get("PIXELBUS_R2_ENDPOINT_URL")
        if account is None and endpoint is None:
            reader.missing.append(("R2_ACCOUNT_ID", "R2_ACCOUNT_ID (or PIXELBUS_R2_ENDPOINT_URL)"))
        if endpoint is None and account is not None:
            return reader.fields(cls, endpoint_url=f"https://{account}.r2.cloudflarestorage.com")
        return reader.fields(cls)


@dataclass(frozen=True, kw_only=True)
class GcsSettings(Settings):
    """Google Cloud Storage (JSON API). Without ``public_url`` the URLs are V4-signed GETs.

    ``credentials_file`` unset means the metadata server (workload identity); ``emulator``
    says whether ``STORAGE_EMULATOR_HOST`` set ``api_url``. ``credentials`` is the parsed
    file (never logged).
    """

    bucket: str = setting(
        "PIXELBUS_GCS_BUCKET",
        REQUIRED,
        matching(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", "a bucket name"),
    )
    """Google Cloud Storage bucket (required with `gcs`)"""
    credentials_file: Path | None = setting(
        "GOOGLE_APPLICATION_CREDENTIALS", None, path, default_doc="unset: metadata server"
    )
    """service-account key file; unset, workload identity (the metadata server)"""
    credentials: Mapping[str, Any] = field(default_factory=dict, repr=False)
    public_url: str | None = setting(
        "PIXELBUS_GCS_PUBLIC_URL", None, _url, default_doc="unset: signed URLs"
    )
    """public base URL (e.g. `https://storage.googleapis.com/<bucket>`); unset, output URLs are
    V4-signed GETs"""
    api_url: str = setting(
        "STORAGE_EMULATOR_HOST",
        "https://storage.googleapis.com",
        _url,
        default_doc="unset: Google's API",
    )
    """point the GCS client at an emulator (`http://host:port`)"""
    emulator: bool = False
    url_ttl_s: int = setting("PIXELBUS_GCS_URL_TTL_S", _TTL_S, _TTL)
    """lifetime of signed URLs (7 days at most, as SigV4 and GOOG4 allow)"""
    signer_email: str | None = setting("PIXELBUS_GCS_SIGNER_EMAIL", None)
    """service account that signs URLs through IAM `signBlob` when the credentials have no key
    (workload identity with signed URLs)"""
    timeout_s: float = setting("PIXELBUS_GCS_TIMEOUT_S", 30.0, _positive)
    """connect and read timeout of GCS requests"""
    cache_control: str = setting("PIXELBUS_STORAGE_CACHE_CONTROL", DEFAULT_CACHE_CONTROL)
    """`Cache-Control` of stored objects (r2, gcs)"""

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        file = reader.get("GOOGLE_APPLICATION_CREDENTIALS")
        credentials = _credentials(reader, file) if file is not None else {}
        settings = reader.fields(
            cls, credentials=credentials, emulator=reader.get("STORAGE_EMULATOR_HOST") is not None
        )
        has_key = bool(credentials.get("private_key") and credentials.get("client_email"))
        unreadable = file is not None and not credentials  # already reported
        if not (reader.get("PIXELBUS_GCS_PUBLIC_URL") or has_key or unreadable) and not (
            reader.get("PIXELBUS_GCS_SIGNER_EMAIL")
        ):
            # signed URLs need a key: the file's, or IAM signBlob as a named service account
            reader.missing.append(
                (
                    "PIXELBUS_GCS_SIGNER_EMAIL",
                    "PIXELBUS_GCS_PUBLIC_URL (or a service-account key in "
                    "GOOGLE_APPLICATION_CREDENTIALS, or PIXELBUS_GCS_SIGNER_EMAIL, to sign URLs)",
                )
            )
        return settings


def _credentials(reader: Reader, path: str) -> dict[str, Any]:
    """The credentials file's JSON; a file that cannot be read or parsed is a bad setting."""
    name = "GOOGLE_APPLICATION_CREDENTIALS"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        reader.refuse(name, f"{name}={path!r} cannot be read ({reason})")
        return {}
    if not isinstance(data, dict) or "type" not in data:
        reader.refuse(name, f"{name}={path!r} is not a Google credentials file (no 'type')")
        return {}
    return data


@dataclass(frozen=True, kw_only=True)
class CfImagesSettings(Settings):
    """Cloudflare Images; ``fallback`` takes the outputs that are not images (or none)."""

    account_id: str = setting("CLOUDFLARE_ACCOUNT_ID", REQUIRED, _ACCOUNT_ID)
    """Cloudflare Images account (required with `cf_images`)"""
    api_token: str = setting("CLOUDFLARE_API_TOKEN", REQUIRED, secret=True)
    """Cloudflare Images token (required with `cf_images`; it needs *Cloudflare Images: Edit*)"""
    variant: str = setting(
        "PIXELBUS_CF_IMAGES_VARIANT", "public", matching(r"[A-Za-z0-9_-]{1,99}", "a variant name")
    )
    """the variant whose delivery URL outputs get"""
    api_url: str = setting(
        "PIXELBUS_CF_IMAGES_API_URL", "https://api.cloudflare.com/client/v4", _url
    )
    """API override (tests)"""
    fallback: ProviderName | None = setting(
        "PIXELBUS_CF_IMAGES_FALLBACK", None, _fallback, default_doc="`none`"
    )
    """`local`, `r2` or `gcs`: where outputs that are not images go (their settings then required
    too); `none`: such a task fails naming this setting"""
    timeout_s: float = setting("PIXELBUS_CF_IMAGES_TIMEOUT_S", 30.0, _positive)
    """connect and read timeout of Cloudflare Images requests"""


@dataclass(frozen=True, kw_only=True)
class RetrySettings(Settings):
    """In-process retries of a retryable failure, before JetStream's redelivery takes over.

    ``attempts`` tries in all; the waits double from ``base_s`` up to ``max_s``.
    """

    attempts: int = setting("PIXELBUS_STORAGE_RETRY_ATTEMPTS", 3, _integer(1, 20))
    """tries of an upload that failed retryably before the message is redelivered"""
    base_s: float = setting("PIXELBUS_STORAGE_RETRY_BASE_S", 0.5, _positive)
    """first wait between tries; waits double up to the max, with jitter"""
    max_s: float = setting("PIXELBUS_STORAGE_RETRY_MAX_S", 8.0, _positive)
    """longest wait between tries"""


@dataclass(frozen=True, kw_only=True)
class StorageSettings(Settings):
    """The chosen provider and its settings (other providers' are ``None``, except a
    ``cf_images`` fallback's). Every problem with them is reported in one ``SettingsError``."""

    provider: ProviderName = setting("STORAGE_PROVIDER", "local", _provider)
    """`local`, `r2`, `gcs` or `cf_images` (see *Storage providers*)"""
    local: LocalSettings | None = section(LocalSettings, optional=True)
    r2: R2Settings | None = section(R2Settings, optional=True)
    gcs: GcsSettings | None = section(GcsSettings, optional=True)
    cf_images: CfImagesSettings | None = section(CfImagesSettings, optional=True)
    retry: RetrySettings = section(RetrySettings)
    health_interval_s: float = setting("PIXELBUS_STORAGE_HEALTH_INTERVAL_S", 30.0, _positive)
    """how often the uploader checks its provider for `/api/health`"""

    @classmethod
    def refusal(cls, reader: Reader) -> Exception:
        return _refusal(reader)

    @classmethod
    def read(cls, reader: Reader) -> Self | None:
        """Only the chosen provider's settings are read (and its fallback's)."""
        provider = (reader.get("STORAGE_PROVIDER") or "local").lower()
        chosen: dict[str, Settings | None] = {}
        if provider == "cf_images":
            cf = chosen["cf_images"] = CfImagesSettings.read(reader)
            if cf is not None and cf.fallback is not None:
                chosen[cf.fallback] = _SECTIONS[cf.fallback].read(reader)
        elif provider in _SECTIONS:
            chosen[provider] = _SECTIONS[provider].read(reader)
        return reader.fields(cls, **chosen)


_SECTIONS: dict[str, type[Settings]] = {
    "local": LocalSettings,
    "r2": R2Settings,
    "gcs": GcsSettings,
}


def _refusal(reader: Reader) -> SettingsError:
    """One error naming every problem, and every setting at fault."""
    provider = (reader.get("STORAGE_PROVIDER") or "local").lower()
    return SettingsError(reader.message(f"STORAGE_PROVIDER={provider}"), settings=reader.names)


@dataclass(frozen=True)
class UploaderSettings(Settings):
    """The storage uploader process: the bus, the storage, how many outputs at once."""

    bus: BusSettings = section(BusSettings)
    storage: StorageSettings = section(StorageSettings)
    concurrency: int = setting(
        "PIXELBUS_UPLOAD_CONCURRENCY", DEFAULT_UPLOAD_CONCURRENCY, integer(1, 1024)
    )
    """outputs the storage uploader stores at once (and the connections an R2 client keeps)"""

    @classmethod
    def refusal(cls, reader: Reader) -> Exception:
        return _refusal(reader)
