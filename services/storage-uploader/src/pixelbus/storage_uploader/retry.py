"""Retrying a store that failed with a retryable error, with exponential backoff.

``store_with_retries`` tries ``RetrySettings.attempts`` times in all, waiting as the
lifecycle's ``RetryPolicy`` says, re-opening the upload's stream each time, and raises the
last error, after which JetStream's redelivery (with its own growing delay) takes over.
A permanent error is raised at once: nothing that will not heal is retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from pixelbus.runtime.lifecycle import RetryPolicy
from pixelbus.storage_uploader.errors import StorageError
from pixelbus.storage_uploader.providers.base import StorageProvider, Stored, Upload
from pixelbus.storage_uploader.settings import RetrySettings

__all__ = ["store_with_retries"]

log = structlog.get_logger("pixelbus.storage_uploader")


async def store_with_retries(
    provider: StorageProvider,
    upload: Upload,
    policy: RetrySettings,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    draw: Callable[[], float] = random.random,
) -> Stored:
    backoff = RetryPolicy(policy.base_s, policy.max_s, policy.attempts)
    for failures in range(1, policy.attempts + 1):
        try:
            return await provider.store(upload)
        except StorageError as exc:
            if not exc.retryable or failures == policy.attempts:
                raise
            wait = backoff.delay_s(failures, draw())
            log.info(
                "store failed, retrying",
                key=upload.key,
                provider=exc.provider,
                code=exc.code,
                failures=failures,
                wait_s=round(wait, 3),
            )
            await sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")
