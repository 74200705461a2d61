"""The dispatcher: POSTs each queued delivery, signed, and leaves the retrying to
JetStream. A failed attempt naks the job with the next backoff delay (so a restart, or
another webhooks replica, picks it up when it is due); the last attempt, or a URL the
SSRF guard refuses, terminates it with a final ``failed`` entry in the delivery log. A
job delivered again after its last attempt (the dispatcher died during it) gets that
final entry too, without another POST: the consumer allows a few deliveries more than
the attempts for exactly this."""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from pixelbus.contracts.subjects import (
    WEBHOOK_DISPATCHER_CONSUMER,
    WEBHOOK_LOG_BUCKET,
    WEBHOOK_STREAM,
)
from pixelbus.contracts.webhooks import DeliveryAttempt, WebhookJob, signature_headers
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.lifecycle import RetryPolicy, after_failure
from pixelbus.runtime.pull import DurableLoop, keep_alive
from pixelbus.runtime.webhook_log import DeliveryLogStore
from pixelbus.webhooks.sender import SendResult, WebhookSender
from pixelbus.webhooks.settings import WebhookSettings

__all__ = ["WebhookDispatcher", "decide"]

log = structlog.get_logger("pixelbus.webhooks.dispatcher")

_decoder = msgspec.json.Decoder(WebhookJob)


def decide(
    result: SendResult, attempt: int, settings: WebhookSettings, draw: float
) -> tuple[str, float]:
    """``(outcome, delay)``: ``delivered``, ``retrying`` after ``delay`` s (the lifecycle's
    backoff, ``draw`` its jitter), or ``failed``."""
    if result.ok:
        return "delivered", 0.0
    policy = RetryPolicy(settings.backoff_s, settings.backoff_max_s, settings.max_attempts)
    settle = after_failure(policy, attempt, retryable=result.retryable, draw=draw)
    return ("failed", 0.0) if settle.final else ("retrying", settle.delay_s)


class WebhookDispatcher(DurableLoop):
    stream = WEBHOOK_STREAM
    durable = WEBHOOK_DISPATCHER_CONSUMER
    what = "webhook delivery"

    def __init__(
        self, nc: Client, settings: WebhookSettings, sender: WebhookSender, *, lease_s: float
    ) -> None:
        """``lease_s``: the consumer's ack wait; a POST under way heartbeats within it."""
        super().__init__(nc, concurrency=settings.concurrency, grace_s=settings.timeout_s)
        self._settings = settings
        self._lease_s = lease_s
        self._sender = sender
        self._log: DeliveryLogStore | None = None

    async def run(self) -> None:
        self._log = DeliveryLogStore(await self._js.key_value(WEBHOOK_LOG_BUCKET))
        await super().run()

    async def process(self, msg: Msg) -> None:
        assert self._log is not None
        try:
            job = _decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        if attempt > 1 and await self._already_delivered(job):
            await msg.ack()  # posted and logged; the dispatcher died before its ack
            return
        if attempt > self._settings.max_attempts:
            await self._spent(msg, job, attempt)
            return
        headers = {
            "content-type": "application/json",
            "user-agent": "pixelbus-webhooks",
            **signature_headers(
                self._settings.secret_for(job.owner), job.delivery_id, int(time.time()), job.body
            ),
        }
        with keep_alive(msg, max(0.2, self._lease_s / 3)):
            result = await self._sender.post(job.url, job.body, headers)
        outcome, delay = decide(result, attempt, self._settings, random.random())
        await self._record(
            job,
            attempt,
            outcome,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            next_attempt_in_s=delay if outcome == "retrying" else None,
        )
        fields = {"task_id": job.task_id, "webhook_event": job.event, "attempt": attempt}
        if outcome == "delivered":
            await msg.ack_sync()
            log.info("webhook delivered", outcome=outcome, status=result.status_code, **fields)
        elif outcome == "retrying":
            await msg.nak(delay=delay)
            log.info("webhook retrying", outcome=outcome, error=result.error, delay=delay, **fields)
        else:
            await msg.term()
            log.warning("webhook failed", outcome=outcome, error=result.error, **fields)

    async def _already_delivered(self, job: WebhookJob) -> bool:
        """A redelivered job whose POST the log already records as ``delivered``: posting
        it again would hand the receiver a duplicate (a first delivery reads nothing)."""
        assert self._log is not None
        entries = (await self._log.read(job.task_id)).attempts
        return any(e.delivery_id == job.delivery_id and e.outcome == "delivered" for e in entries)

    async def _spent(self, msg: Msg, job: WebhookJob, attempt: int) -> None:
        """Delivered again after the last attempt: the dispatcher stopped during that one
        (before or after posting), so it left no outcome. The budget is spent: the log gets
        its final ``failed`` entry, never a ``pending`` for ever, and nothing is posted."""
        assert self._log is not None
        error = (
            f"no outcome recorded for attempt {self._settings.max_attempts} of "
            f"{self._settings.max_attempts} (the dispatcher stopped during it)"
        )
        await self._record(job, attempt, "failed", error=error)
        await msg.term()
        log.warning("webhook failed", outcome="failed", error=error, task_id=job.task_id)

    async def _record(self, job: WebhookJob, attempt: int, outcome: str, **details: Any) -> None:
        """One entry of the task's delivery log."""
        assert self._log is not None
        entry = DeliveryAttempt(
            delivery_id=job.delivery_id,
            event=job.event,
            attempt=attempt,
            at=utcnow(),
            outcome=outcome,
            **details,
        )
        await self._log.append(job.task_id, entry)
