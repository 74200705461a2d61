"""R2 at production size against the S3 server: multipart uploads fed from a stream of
chunks, presigned URLs, Cache-Control, and no parts left behind by a failed upload."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from pixelbus.storage_uploader.providers import R2Provider, Upload, store_bytes
from pixelbus.storage_uploader.settings import MIN_PART_SIZE, R2Settings, StorageSettings
from pixelbus.testkit.s3_server import S3Server

CHUNK = 128 * 1024  # the Object Store's chunk size


def settings(server: S3Server, bucket: str, **extra: str) -> R2Settings:
    env = {
        "STORAGE_PROVIDER": "r2",
        "R2_ACCESS_KEY_ID": server.credentials.access_key_id,
        "R2_SECRET_ACCESS_KEY": server.credentials.secret_access_key,
        "R2_BUCKET": bucket,
        "PIXELBUS_R2_ENDPOINT_URL": server.endpoint_url,
        "PIXELBUS_R2_PART_SIZE": str(MIN_PART_SIZE),
        **extra,
    }
    r2 = StorageSettings.from_env(env).r2
    assert r2 is not None
    return r2


def streamed(key: str, size: int, content_type: str = "video/mp4") -> Upload:
    """``size`` bytes of a repeating pattern, chunk by chunk, never whole in memory."""

    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            n = min(CHUNK, size - sent)
            yield bytes([(sent // CHUNK) % 251]) * n
            sent += n

    return Upload(key=key, content_type=content_type, size=size, open=chunks)


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK):
        digest.update(bytes([(offset // CHUNK) % 251]) * min(CHUNK, size - offset))
    return digest.hexdigest()


async def test_a_large_output_goes_up_in_parts_with_type_and_cache_control(
    s3_server: S3Server, s3_bucket: str
) -> None:
    size = 2 * MIN_PART_SIZE + 3 * CHUNK + 17  # three parts, the last one small
    provider = R2Provider(settings(s3_server, s3_bucket, R2_PUBLIC_URL="https://cdn.example.com"))
    try:
        stored = await provider.store(streamed("tasks/2026/11/28/t/clip.mp4", size))
    finally:
        await provider.aclose()
    assert stored.url == "https://cdn.example.com/tasks/2026/11/28/t/clip.mp4"
    obj = s3_server.client().get_object(Bucket=s3_bucket, Key="tasks/2026/11/28/t/clip.mp4")
    body = obj["Body"].read()
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_digest(size)
    assert obj["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
    assert obj["ContentType"] == "video/mp4"
    assert obj["CacheControl"] == "public, max-age=604800"


async def test_an_output_of_less_than_a_part_is_one_put(
    s3_server: S3Server, s3_bucket: str
) -> None:
    provider = R2Provider(settings(s3_server, s3_bucket, R2_PUBLIC_URL="https://cdn.example.com"))
    try:
        await provider.store(streamed("tasks/t/small.mp4", MIN_PART_SIZE - 1))
    finally:
        await provider.aclose()
    obj = s3_server.client().head_object(Bucket=s3_bucket, Key="tasks/t/small.mp4")
    assert "-" not in obj["ETag"]
    assert obj["ContentLength"] == MIN_PART_SIZE - 1


def sigv4_query_signature_is_valid(url: str, secret: str) -> bool:
    """Check a presigned GET as S3 does (SigV4, query-string form), independently of
    botocore. (moto verifies header signatures only: it cannot check a presigned URL.)"""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical = "\n".join(
        ["GET", parts.path, query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    day, region, service, _ = scope.split("/")
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


async def test_without_a_public_url_the_url_is_a_valid_presigned_get_of_the_object(
    s3_server: S3Server, s3_bucket: str
) -> None:
    r2 = settings(s3_server, s3_bucket, PIXELBUS_R2_URL_TTL_S="600")
    assert r2.public_url is None
    provider = R2Provider(r2)
    try:
        url = await store_bytes(provider, "tasks/t/a.png", b"\x89PNG data", "image/png")
    finally:
        await provider.aclose()
    assert url.startswith(f"{s3_server.endpoint_url}/{s3_bucket}/tasks/t/a.png?")
    assert "X-Amz-Expires=600" in url
    secret = s3_server.credentials.secret_access_key
    assert sigv4_query_signature_is_valid(url, secret)
    assert not sigv4_query_signature_is_valid(url.replace("Expires=600", "Expires=601"), secret)
    assert not sigv4_query_signature_is_valid(url, "another-secret")
    obj = s3_server.client().get_object(Bucket=s3_bucket, Key="tasks/t/a.png")
    assert obj["Body"].read() == b"\x89PNG data"


async def test_a_stream_that_breaks_midway_leaves_no_object_and_no_parts(
    s3_server: S3Server, s3_bucket: str
) -> None:
    class Broken(Exception):
        pass

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2 * MIN_PART_SIZE // CHUNK):  # two full parts, then it breaks
            yield b"x" * CHUNK
        raise Broken

    upload = Upload(key="tasks/t/broken.mp4", content_type="video/mp4", size=1, open=chunks)
    provider = R2Provider(settings(s3_server, s3_bucket, R2_PUBLIC_URL="https://cdn.example.com"))
    try:
        with pytest.raises(Broken):
            await provider.store(upload)
    finally:
        await provider.aclose()
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
