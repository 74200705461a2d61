"""The Cloudflare Images provider against the test kit's API server, which speaks the v4
API's shapes (documented in ``pixelbus.testkit.cf_images_server``):

    POST /client/v4/accounts/{account}/images/v1   multipart: file, id, requireSignedURLs
      200 {"success": true, "errors": [], "messages": [],
           "result": {"id", "filename", "uploaded", "requireSignedURLs", "meta",
                      "variants": ["<delivery>/<hash>/<id>/<variant>", ...]}}
      409 {"success": false, "errors": [{"code": 5409, "message": "Resource already exists"}]}
      400 {"errors": [{"code": 5400, "message": "Bad request: ERROR 9422: Decode error: ..."}]}
      401/403 {"errors": [{"code": 10000, "message": "Authentication error"}]}
      429 {"errors": [{"code": 971, "message": "Please wait and consider throttling ..."}]}
      5xx an HTML page from the edge, not JSON
    GET  /client/v4/accounts/{account}/images/v1/{id}     the same "result"
    GET  /client/v4/accounts/{account}/images/v1/stats    {"result": {"count": {...}}}
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pixelbus.storage_uploader.errors import StoragePermanentError, StorageRetryableError
from pixelbus.storage_uploader.providers import (
    CfImagesProvider,
    LocalProvider,
    Upload,
    build_provider,
    store_bytes,
)
from pixelbus.storage_uploader.settings import CfImagesSettings, LocalSettings, StorageSettings
from pixelbus.testkit.cf_images_server import CfImagesServer

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
KEY = "tasks/2026/11/28/task_1/result.png"


def cf_env(server: CfImagesServer, **extra: str) -> dict[str, str]:
    return {
        "STORAGE_PROVIDER": "cf_images",
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_API_TOKEN": server.api_token,
        "PIXELBUS_CF_IMAGES_API_URL": server.api_url,
        **extra,
    }


def cf_settings(server: CfImagesServer, **extra: str) -> CfImagesSettings:
    settings = StorageSettings.from_env(cf_env(server, **extra)).cf_images
    assert settings is not None
    return settings


@pytest.fixture
async def provider(cf_images_server: CfImagesServer) -> AsyncIterator[CfImagesProvider]:
    provider = CfImagesProvider(cf_settings(cf_images_server))
    yield provider
    await provider.aclose()


async def test_an_image_is_uploaded_under_its_key_and_served_by_the_variant_url(
    provider: CfImagesProvider, cf_images_server: CfImagesServer
) -> None:
    url = await store_bytes(provider, KEY, PNG, "image/png")
    base = f"{cf_images_server.delivery_url}/{cf_images_server.account_hash}"
    assert url == f"{base}/{KEY}/public"
    assert cf_images_server.images[KEY].data == PNG
    assert cf_images_server.images[KEY].filename == "result.png"
    async with httpx.AsyncClient() as http:
        served = await http.get(url)
    assert (served.status_code, served.content) == (200, PNG)


async def test_the_configured_variant_is_the_one_returned(
    cf_images_server: CfImagesServer,
) -> None:
    settings = cf_settings(cf_images_server, PIXELBUS_CF_IMAGES_VARIANT="thumbnail")
    provider = CfImagesProvider(settings)
    try:
        url = await store_bytes(provider, KEY, PNG, "image/png")
    finally:
        await provider.aclose()
    assert url.endswith(f"/{KEY}/thumbnail")


async def test_a_redelivered_upload_keeps_one_image_and_the_same_url(
    provider: CfImagesProvider, cf_images_server: CfImagesServer
) -> None:
    first = await store_bytes(provider, KEY, PNG, "image/png")
    second = await store_bytes(provider, KEY, PNG, "image/png")
    assert first == second
    assert list(cf_images_server.images) == [KEY]
    api = f"/client/v4/accounts/{cf_images_server.account_id}/images/v1"
    assert cf_images_server.requests == [("POST", api), ("POST", api), ("GET", f"{api}/{KEY}")]


async def test_an_unknown_variant_is_permanent_and_names_the_setting(
    cf_images_server: CfImagesServer,
) -> None:
    provider = CfImagesProvider(cf_settings(cf_images_server, PIXELBUS_CF_IMAGES_VARIANT="hero"))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, KEY, PNG, "image/png")
    finally:
        await provider.aclose()
    assert caught.value.code == "no_such_variant"
    assert "PIXELBUS_CF_IMAGES_VARIANT" in str(caught.value)
    assert "public, thumbnail" in str(caught.value)


async def test_a_non_image_without_fallback_fails_permanently_before_any_request(
    provider: CfImagesProvider, cf_images_server: CfImagesServer
) -> None:
    with pytest.raises(StoragePermanentError) as caught:
        await store_bytes(provider, "tasks/t/clip.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    assert caught.value.code == "not_an_image"
    assert "PIXELBUS_CF_IMAGES_FALLBACK" in str(caught.value)
    assert "video/mp4" in str(caught.value)
    assert cf_images_server.requests == []


async def test_a_non_image_goes_to_the_fallback_and_images_still_to_cloudflare(
    cf_images_server: CfImagesServer, tmp_path: Path
) -> None:
    env = cf_env(
        cf_images_server,
        PIXELBUS_CF_IMAGES_FALLBACK="local",
        PIXELBUS_LOCAL_STORAGE_DIR=str(tmp_path),
        PIXELBUS_PUBLIC_BASE_URL="http://files.test",
    )
    provider = build_provider(StorageSettings.from_env(env))
    try:
        video = await provider.store(
            Upload.of_bytes("tasks/t/clip.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
        )
        image = await provider.store(Upload.of_bytes(KEY, PNG, "image/png"))
        await provider.check()
    finally:
        await provider.aclose()
    assert video == type(video)("http://files.test/files/tasks/t/clip.mp4", "local")
    assert (tmp_path / "tasks/t/clip.mp4").read_bytes() == b"\x00\x00\x00\x18ftypmp42"
    assert image.provider == "cf_images" and list(cf_images_server.images) == [KEY]


async def test_an_image_too_large_for_cloudflare_goes_to_the_fallback(
    cf_images_server: CfImagesServer, tmp_path: Path
) -> None:
    fallback = LocalProvider(LocalSettings(directory=tmp_path, public_base_url="http://f.test"))
    provider = CfImagesProvider(cf_settings(cf_images_server), fallback=fallback)
    big = PNG + bytes(10 * 1024 * 1024)
    try:
        stored = await provider.store(Upload.of_bytes(KEY, big, "image/png"))
    finally:
        await provider.aclose()
    assert stored.provider == "local"
    assert cf_images_server.requests == []


async def test_bytes_the_api_cannot_decode_are_a_permanent_failure(
    provider: CfImagesProvider,
) -> None:
    with pytest.raises(StoragePermanentError) as caught:
        await store_bytes(provider, KEY, b"not really a png", "image/png")
    assert caught.value.code == "5400"
    assert "9422" in str(caught.value)


async def test_a_refused_token_is_permanent_names_the_setting_and_is_tried_once(
    cf_images_server: CfImagesServer,
) -> None:
    provider = CfImagesProvider(cf_settings(cf_images_server, CLOUDFLARE_API_TOKEN="wrong"))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, KEY, PNG, "image/png")
        with pytest.raises(StoragePermanentError, match="CLOUDFLARE_API_TOKEN"):
            await provider.check()
    finally:
        await provider.aclose()
    error = caught.value
    assert (error.provider, error.code, error.retryable) == ("cf_images", "10000", False)
    assert "answered 401" in str(error) and "CLOUDFLARE_API_TOKEN" in str(error)
    assert "wrong" not in str(error)
    assert len(cf_images_server.requests) == 2 and cf_images_server.images == {}


async def test_another_account_is_refused_and_names_the_account_setting(
    cf_images_server: CfImagesServer,
) -> None:
    settings = cf_settings(cf_images_server, CLOUDFLARE_ACCOUNT_ID="0" * 32)
    provider = CfImagesProvider(settings)
    try:
        with pytest.raises(StoragePermanentError, match="CLOUDFLARE_ACCOUNT_ID") as caught:
            await store_bytes(provider, KEY, PNG, "image/png")
    finally:
        await provider.aclose()
    assert "answered 403" in str(caught.value)


@pytest.mark.parametrize(("status", "code"), [(429, "971"), (503, "503"), (500, "500")])
async def test_throttling_and_server_errors_are_retryable_then_the_next_try_lands(
    provider: CfImagesProvider, cf_images_server: CfImagesServer, status: int, code: str
) -> None:
    cf_images_server.fail_next(1, status)
    with pytest.raises(StorageRetryableError) as caught:
        await store_bytes(provider, KEY, PNG, "image/png")
    assert caught.value.code == code
    assert f"answered {status}" in str(caught.value)
    url = await store_bytes(provider, KEY, PNG, "image/png")
    assert url.endswith("/public") and list(cf_images_server.images) == [KEY]


async def test_check_reads_the_account_stats(
    provider: CfImagesProvider, cf_images_server: CfImagesServer
) -> None:
    await provider.check()
    stats = f"/client/v4/accounts/{cf_images_server.account_id}/images/v1/stats"
    assert cf_images_server.requests == [("GET", stats)]


async def test_an_api_nobody_listens_on_is_retryable() -> None:
    settings = CfImagesSettings(
        account_id="a" * 32, api_token="t", api_url="http://127.0.0.1:9/client/v4"
    )
    provider = CfImagesProvider(settings)
    try:
        with pytest.raises(StorageRetryableError, match="PIXELBUS_CF_IMAGES_API_URL"):
            await store_bytes(provider, KEY, PNG, "image/png")
    finally:
        await provider.aclose()
