"""Pure parts: the backoff schedule, the retry loop (with a provider that fails on cue),
the presence record, and the GCS string to sign."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pixelbus.runtime.lifecycle import RetryPolicy
from pixelbus.storage_uploader.errors import (
    StorageError,
    StoragePermanentError,
    StorageRetryableError,
)
from pixelbus.storage_uploader.presence import ProviderHealth, presence_key, presence_value
from pixelbus.storage_uploader.providers import Stored, Upload
from pixelbus.storage_uploader.providers.gcs_signing import string_to_sign
from pixelbus.storage_uploader.retry import store_with_retries
from pixelbus.storage_uploader.settings import RetrySettings

POLICY = RetrySettings(attempts=4, base_s=0.5, max_s=1.5)


@pytest.mark.parametrize(
    ("failures", "draw", "wait"),
    [(1, 0.0, 0.25), (1, 1.0, 0.5), (2, 0.0, 0.5), (3, 1.0, 1.5), (9, 1.0, 1.5), (9, 0.0, 0.75)],
)
def test_backoff_doubles_from_the_base_is_capped_and_jittered_into_its_upper_half(
    failures: int, draw: float, wait: float
) -> None:
    backoff = RetryPolicy(POLICY.base_s, POLICY.max_s, POLICY.attempts)
    assert backoff.delay_s(failures, draw) == pytest.approx(wait)


class Script:
    """A provider answering from a script of errors, then success; records each call."""

    name = "scripted"

    def __init__(self, *errors: StorageError) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.reads: list[bytes] = []

    async def store(self, upload: Upload) -> Stored:
        self.calls += 1
        self.reads.append(await upload.read())  # each try reads the stream from its start
        if self.errors:
            raise self.errors.pop(0)
        return Stored("https://x/" + upload.key, self.name)

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def retryable(code: str = "503") -> StorageRetryableError:
    return StorageRetryableError("scripted: 503", provider="scripted", code=code)


async def test_retryable_failures_are_retried_with_the_backoff_until_success() -> None:
    provider = Script(retryable(), retryable())
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    upload = Upload.of_bytes("tasks/t/a.png", b"bytes", "image/png")
    stored = await store_with_retries(provider, upload, POLICY, sleep=sleep, draw=lambda: 1.0)
    assert stored.url == "https://x/tasks/t/a.png"
    assert provider.calls == 3 and provider.reads == [b"bytes"] * 3
    assert waits == [0.5, 1.0]


async def test_the_last_retryable_error_is_raised_once_the_attempts_are_spent() -> None:
    provider = Script(*(retryable(str(n)) for n in range(10)))

    async def sleep(seconds: float) -> None:
        pass

    upload = Upload.of_bytes("tasks/t/a.png", b"x", "image/png")
    with pytest.raises(StorageRetryableError) as caught:
        await store_with_retries(provider, upload, POLICY, sleep=sleep)
    assert provider.calls == 4 and caught.value.code == "3"


async def test_a_permanent_error_is_raised_at_once() -> None:
    provider = Script(StoragePermanentError("scripted: no", provider="scripted", code="403"))

    async def sleep(seconds: float) -> None:
        raise AssertionError("no wait for a permanent error")

    upload = Upload.of_bytes("tasks/t/a.png", b"x", "image/png")
    with pytest.raises(StoragePermanentError):
        await store_with_retries(provider, upload, POLICY, sleep=sleep)
    assert provider.calls == 1


def test_provider_health_is_due_first_and_then_after_the_interval() -> None:
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    fresh = ProviderHealth()
    assert fresh.reachable is None and fresh.due(now, 30)
    failed = fresh.verdict("r2: bucket does not exist", now)
    assert (failed.reachable, failed.error) == (False, "r2: bucket does not exist")
    assert not failed.due(now + timedelta(seconds=29), 30)
    assert failed.due(now + timedelta(seconds=30), 30)
    assert failed.verdict(None, now).reachable is True


def test_the_presence_record_names_the_pool_provider_and_verdict() -> None:
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    health = ProviderHealth().verdict(None, now)
    record = json.loads(
        presence_value(uploader_id="up-1", provider="gcs", health=health, in_flight=2, now=now)
    )
    assert record == {
        "worker": "up-1",
        "pool": "storage",
        "provider": "gcs",
        "reachable": True,
        "error": None,
        "checked_at": "2026-11-28T06:00:00+00:00",
        "in_flight": 2,
        "at": "2026-11-28T06:00:00+00:00",
    }
    assert presence_key("up-1") == "storage.up-1"


def test_the_gcs_string_to_sign_follows_the_v4_layout() -> None:
    to_sign, unsigned = string_to_sign(
        base_url="https://storage.googleapis.com",
        bucket="outputs",
        key="tasks/2026/11/28/t/a b.png",
        email="sa@p.iam.gserviceaccount.com",
        now=datetime(2026, 11, 28, 6, 0, 1, tzinfo=UTC),
        expires_s=600,
    )
    algorithm, timestamp, scope, digest = to_sign.split("\n")
    assert (algorithm, timestamp) == ("GOOG4-RSA-SHA256", "20261128T060001Z")
    assert scope == "20261128/auto/storage/goog4_request"
    assert len(digest) == 64
    assert unsigned.startswith(
        "https://storage.googleapis.com/outputs/tasks/2026/11/28/t/a%20b.png?"
    )
    assert (
        "X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20261128%2Fauto%2Fstorage" in unsigned
    )
    assert "X-Goog-Expires=600&X-Goog-SignedHeaders=host" in unsigned
