"""The R2 provider against a real S3 server (moto, in its own process, checking signatures)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioboto3
import pytest

from pixelbus.storage_uploader.errors import StoragePermanentError, StorageRetryableError
from pixelbus.storage_uploader.providers import R2Provider, build_provider, output_key, store_bytes
from pixelbus.storage_uploader.settings import R2Settings, StorageSettings
from pixelbus.testkit.s3_server import FaultyProxy, S3Credentials, S3Server

PUBLIC_URL = "https://cdn.example.com"


def r2_settings(
    server: S3Server,
    bucket: str,
    *,
    credentials: S3Credentials | None = None,
    endpoint_url: str | None = None,
    timeout_s: float | None = None,
) -> R2Settings:
    """Settings as the service reads them, pointed at the test server."""
    creds = credentials or server.credentials
    env = {
        "STORAGE_PROVIDER": "r2",
        "R2_ACCESS_KEY_ID": creds.access_key_id,
        "R2_SECRET_ACCESS_KEY": creds.secret_access_key,
        "R2_BUCKET": bucket,
        "R2_PUBLIC_URL": PUBLIC_URL + "/",
        "PIXELBUS_R2_ENDPOINT_URL": endpoint_url or server.endpoint_url,
    }
    if timeout_s is not None:
        env["PIXELBUS_R2_TIMEOUT_S"] = str(timeout_s)
    settings = StorageSettings.from_env(env).r2
    assert settings is not None
    return settings


@pytest.fixture
async def provider(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[R2Provider]:
    provider = R2Provider(r2_settings(s3_server, s3_bucket))
    yield provider
    await provider.aclose()


def stored(server: S3Server, bucket: str, key: str) -> tuple[bytes, str]:
    obj = server.client().get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["ContentType"]


def keys_in(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


async def test_put_stores_the_bytes_with_their_content_type_and_returns_the_public_url(
    provider: R2Provider, s3_server: S3Server, s3_bucket: str
) -> None:
    key = output_key("task_1", "out.webp")
    url = await store_bytes(provider, key, b"RIFF....WEBP", "image/webp")
    assert url == f"{PUBLIC_URL}/tasks/task_1/out.webp"
    assert stored(s3_server, s3_bucket, key) == (b"RIFF....WEBP", "image/webp")


async def test_the_same_key_twice_is_one_object_with_the_last_bytes(
    provider: R2Provider, s3_server: S3Server, s3_bucket: str
) -> None:
    key = output_key("task_1", "out.png")
    first = await store_bytes(provider, key, b"first", "image/png")
    second = await store_bytes(provider, key, b"second", "image/png")
    assert first == second
    assert keys_in(s3_server, s3_bucket) == [key]
    assert stored(s3_server, s3_bucket, key) == (b"second", "image/png")


async def test_check_passes_when_the_bucket_is_there(provider: R2Provider) -> None:
    await provider.check()


async def test_concurrent_puts_share_one_client(s3_server: S3Server, s3_bucket: str) -> None:
    class CountingSession(aioboto3.Session):  # type: ignore[misc]  # counts client creation
        clients = 0

        def client(self, *args: Any, **kwargs: Any) -> Any:
            CountingSession.clients += 1
            return super().client(*args, **kwargs)

    provider = R2Provider(r2_settings(s3_server, s3_bucket), session=CountingSession())
    keys = [output_key("t", f"{i}.png") for i in range(8)]
    try:
        await asyncio.gather(*(store_bytes(provider, k, k.encode(), "image/png") for k in keys))
        await provider.check()
    finally:
        await provider.aclose()
        await provider.aclose()  # closing twice is harmless
    assert CountingSession.clients == 1
    assert sorted(keys_in(s3_server, s3_bucket)) == sorted(keys)


async def test_a_missing_bucket_is_permanent_and_named(s3_server: S3Server) -> None:
    provider = R2Provider(r2_settings(s3_server, "no-such-bucket"))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
        assert caught.value.code == "NoSuchBucket"
        assert "'no-such-bucket'" in str(caught.value)
        assert "R2_BUCKET" in str(caught.value)
        with pytest.raises(StoragePermanentError, match="R2_BUCKET") as checked:
            await provider.check()
        assert checked.value.code == "NoSuchBucket"
    finally:
        await provider.aclose()


def unknown_key(server: S3Server) -> S3Credentials:
    return S3Credentials("AKIAUNKNOWNKEY000000", "whatever")


def wrong_secret(server: S3Server) -> S3Credentials:
    return S3Credentials(server.credentials.access_key_id, "wrong-secret")


def read_only_user(server: S3Server) -> S3Credentials:
    return server.create_user(("s3:GetObject", "s3:ListBucket"))


async def test_answers_behind_the_fault_proxy_are_the_servers_own(s3_server: S3Server) -> None:
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        settings = r2_settings(s3_server, "no-such-bucket", endpoint_url=proxy.endpoint_url)
        provider = R2Provider(settings)
        try:
            with pytest.raises(StoragePermanentError) as caught:
                await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
        finally:
            await provider.aclose()
    assert caught.value.code == "NoSuchBucket"
    assert (proxy.requests, proxy.faults) == (1, 0)


@pytest.mark.parametrize(
    ("make_credentials", "code", "setting"),
    [
        (unknown_key, "InvalidAccessKeyId", "R2_ACCESS_KEY_ID"),
        (wrong_secret, "SignatureDoesNotMatch", "R2_SECRET_ACCESS_KEY"),
        (read_only_user, "AccessDenied", "R2_ACCESS_KEY_ID"),
    ],
)
async def test_refused_credentials_are_permanent_and_name_the_setting(
    s3_server: S3Server,
    s3_bucket: str,
    make_credentials: Callable[[S3Server], S3Credentials],
    code: str,
    setting: str,
) -> None:
    credentials = make_credentials(s3_server)
    provider = R2Provider(r2_settings(s3_server, s3_bucket, credentials=credentials))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
    finally:
        await provider.aclose()
    error = caught.value
    assert (error.code, error.provider, error.retryable) == (code, "r2", False)
    assert str(error).startswith("r2: ")
    assert "(403 " in str(error)
    assert f"bucket '{s3_bucket}'" in str(error)
    assert setting in str(error)
    assert credentials.secret_access_key not in str(error)
    assert keys_in(s3_server, s3_bucket) == []


async def test_check_with_refused_credentials_is_permanent(
    s3_server: S3Server, s3_bucket: str
) -> None:
    credentials = S3Credentials("AKIAUNKNOWNKEY000000", "whatever")
    provider = R2Provider(r2_settings(s3_server, s3_bucket, credentials=credentials))
    try:
        with pytest.raises(StoragePermanentError, match="R2_ACCESS_KEY_ID"):
            await provider.check()
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]
)
async def test_server_errors_are_retryable_and_not_retried_by_botocore(
    s3_server: S3Server, s3_bucket: str, status: int, code: str
) -> None:
    with FaultyProxy(s3_server.endpoint_url, fail_first=1, status=status) as proxy:
        provider = R2Provider(r2_settings(s3_server, s3_bucket, endpoint_url=proxy.endpoint_url))
        try:
            with pytest.raises(StorageRetryableError) as caught:
                await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
            assert proxy.requests == 1  # our retry is JetStream's redelivery, not botocore's
            assert (caught.value.code, caught.value.retryable) == (code, True)
            assert f"({status} {code})" in str(caught.value)
            assert keys_in(s3_server, s3_bucket) == []

            # The next attempt (a redelivery) goes through the same provider and lands.
            await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
        finally:
            await provider.aclose()
    assert stored(s3_server, s3_bucket, "tasks/t/a.png") == (b"x", "image/png")


async def test_a_server_that_does_not_answer_is_a_retryable_timeout(
    s3_server: S3Server, s3_bucket: str
) -> None:
    with FaultyProxy(s3_server.endpoint_url, fail_first=1, hang=True) as proxy:
        settings = r2_settings(s3_server, s3_bucket, endpoint_url=proxy.endpoint_url, timeout_s=0.5)
        provider = R2Provider(settings)
        try:
            with pytest.raises(StorageRetryableError) as caught:
                await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
        finally:
            await provider.aclose()
    assert caught.value.code == "ReadTimeoutError"
    assert proxy.endpoint_url in str(caught.value)


async def test_an_endpoint_nobody_listens_on_is_retryable(
    s3_server: S3Server, s3_bucket: str
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    provider = R2Provider(r2_settings(s3_server, s3_bucket, endpoint_url=endpoint))
    try:
        with pytest.raises(StorageRetryableError) as caught:
            await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
        with pytest.raises(StorageRetryableError):
            await provider.check()
    finally:
        await provider.aclose()
    assert caught.value.code == "EndpointConnectionError"
    assert "PIXELBUS_R2_ENDPOINT_URL" in str(caught.value)


async def test_an_invalid_key_is_refused_before_any_request(
    s3_server: S3Server, s3_bucket: str
) -> None:
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        provider = R2Provider(r2_settings(s3_server, s3_bucket, endpoint_url=proxy.endpoint_url))
        try:
            with pytest.raises(StoragePermanentError) as caught:
                await store_bytes(provider, "../outside.png", b"x", "image/png")
        finally:
            await provider.aclose()
    assert caught.value.code == "invalid_key"
    assert proxy.requests == 0


async def test_build_provider_makes_an_r2_provider(s3_server: S3Server, s3_bucket: str) -> None:
    settings = StorageSettings(provider="r2", r2=r2_settings(s3_server, s3_bucket))
    provider = build_provider(settings)
    try:
        assert provider.name == "r2"
        url = await store_bytes(provider, "tasks/t/a.png", b"x", "image/png")
    finally:
        await provider.aclose()
    assert url == f"{PUBLIC_URL}/tasks/t/a.png"
    assert stored(s3_server, s3_bucket, "tasks/t/a.png") == (b"x", "image/png")
