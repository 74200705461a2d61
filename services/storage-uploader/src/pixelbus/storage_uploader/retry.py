"""Retrying a store that failed with a retryable error, with exponential backoff.

``backoff_s`` is pure (the random draw passed in); ``store_with_retries`` tries
``RetrySettings.attempts`` times in all, re-opening the upload's stream each time, and
raises the last error, after which JetStream's redelivery (with its own growing delay)
takes over. A permanent error is raised at once: nothing that will not heal is retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from pixelbus.storage_uploader.errors import StorageError
from pixelbus.storage_uploader.providers.base import StorageProvider, Stored, Upload
from pixelbus.storage_uploader.settings import RetrySettings

__all__ = ["backoff_s", "store_with_retries"]

log = structlog.get_logger("pixelbus.storage_uploader")


def backoff_s(failures: int, policy: RetrySettings, draw: float) -> float:
    """The wait after the ``failures``-th failure: ``base·2^(failures-1)`` capped at
    ``max_s``, scaled by a draw in [0, 1) into [½, 1) of that (jitter, so that uploaders
    throttled together do not come back together)."""
    ceiling = min(policy.max_s, policy.base_s * 2.0 ** (failures - 1))
    return ceiling * (0.5 + draw / 2)


async def store_with_retries(
    provider: StorageProvider,
    upload: Upload,
    policy: RetrySettings,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    draw: Callable[[], float] = random.random,
) -> Stored:
    for failures in range(1, policy.attempts + 1):
        try:
            return await provider.store(upload)
        except StorageError as exc:
            if not exc.retryable or failures == policy.attempts:
                raise
            wait = backoff_s(failures, policy, draw())
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
