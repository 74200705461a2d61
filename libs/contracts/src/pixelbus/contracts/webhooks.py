"""Webhooks: which task changes are delivered, the delivery job, its log, and signatures.

Planning is pure: ``webhook_target`` reads what a task asked for from its ``TaskCreated``,
and ``plan_job`` turns one event of such a task, with the task's state after that event,
into the ``WebhookJob`` the dispatcher POSTs (``webhook_body``: the task as
``GET /api/tasks/{id}`` shows it). The job's id is the event's id, so planning the same
event twice makes the same job (JetStream de-duplicates it on ``Nats-Msg-Id``).

Signatures follow Standard Webhooks: the headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``"{id}.{timestamp}.{body}"``, keyed with the bytes of a ``whsec_<base64>`` secret).
Pure: the caller passes the time in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

import msgspec

from pixelbus.contracts.events import (
    AnyEvent,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
)
from pixelbus.contracts.task import TaskState
from pixelbus.contracts.views import task_view

__all__ = [
    "DEFAULT_WEBHOOK_EVENTS",
    "WEBHOOK_EVENTS",
    "DeliveryAttempt",
    "DeliveryLog",
    "InvalidSignature",
    "WebhookJob",
    "WebhookTarget",
    "decode_secret",
    "plan_job",
    "sign",
    "signature_headers",
    "verify",
    "webhook_body",
    "webhook_event_name",
    "webhook_target",
]

#: What a task may ask to be told about (``webhook_events``).
WEBHOOK_EVENTS = ("completed", "failed", "cancelled", "started", "progress")
#: Without ``webhook_events``: the final states only.
DEFAULT_WEBHOOK_EVENTS = ("completed", "failed", "cancelled")
_SECRET_PREFIX = "whsec_"  # noqa: S105 — the format, not a secret
DEFAULT_TOLERANCE_S = 300


def webhook_event_name(event: AnyEvent) -> str | None:
    """The webhook event an event is, or None (a retryable failure is not one)."""
    if isinstance(event, TaskCompleted):
        return "completed"
    if isinstance(event, TaskFailed):
        return "failed" if event.final else None
    if isinstance(event, TaskCancelled):
        return "cancelled"
    if isinstance(event, TaskStarted):
        return "started"
    if isinstance(event, TaskProgress):
        return "progress"
    return None


class WebhookJob(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery to make: what the dispatcher POSTs (retried until it lands)."""

    delivery_id: str
    task_id: str
    owner: str | None
    url: str
    event: str
    body: bytes
    created_at: datetime


class WebhookTarget(msgspec.Struct, frozen=True, kw_only=True):
    """What a task's ``TaskCreated`` asked for: where, on which changes, and whose secret."""

    url: str
    events: tuple[str, ...]
    owner: str | None = None


def webhook_target(created: TaskCreated) -> WebhookTarget | None:
    """The task's webhook, or None when it has none."""
    if not created.webhook_url:
        return None
    return WebhookTarget(
        url=created.webhook_url, events=created.webhook_events, owner=created.owner
    )


_body_encoder = msgspec.json.Encoder()


def webhook_body(name: str, event: AnyEvent, view: dict[str, object]) -> bytes:
    """The JSON a receiver gets: Standard Webhooks' ``type``, ``timestamp``, ``data``."""
    return _body_encoder.encode(
        {"type": f"task.{name}", "timestamp": event.occurred_at.isoformat(), "data": view}
    )


def plan_job(
    target: WebhookTarget, event: AnyEvent, state: TaskState, *, now: datetime
) -> WebhookJob | None:
    """The delivery ``event`` makes for a task with ``target``, or None when the task did
    not ask for that kind of change. ``state``: the task's state once ``event`` is folded."""
    name = webhook_event_name(event)
    if name is None or name not in target.events:
        return None
    return WebhookJob(
        delivery_id=event.event_id,
        task_id=event.task_id,
        owner=target.owner,
        url=target.url,
        event=name,
        body=webhook_body(name, event, task_view(state)),
        created_at=now,
    )


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    event: str
    attempt: int
    at: datetime
    outcome: str  # "delivered" | "retrying" | "failed"
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    next_attempt_in_s: float | None = None


class DeliveryLog(msgspec.Struct, frozen=True, kw_only=True):
    """Every delivery attempt of one task's webhook, oldest first (capped)."""

    task_id: str
    attempts: tuple[DeliveryAttempt, ...] = ()

    def status(self) -> str:
        """``failed`` when a delivery gave up, ``pending`` while one is retrying,
        ``delivered`` when every delivery landed, ``none`` before any attempt."""
        last: dict[str, str] = {}
        for attempt in self.attempts:
            last[attempt.delivery_id] = attempt.outcome
        if not last:
            return "none"
        if "failed" in last.values():
            return "failed"
        if "retrying" in last.values():
            return "pending"
        return "delivered"


class InvalidSignature(Exception):
    """The webhook's signature or timestamp does not verify."""


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; raises ``ValueError`` when malformed."""
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError("a webhook secret looks like whsec_<base64>")
    try:
        key = base64.b64decode(secret.removeprefix(_SECRET_PREFIX), validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret looks like whsec_<base64>") from exc
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: dict[str, str],
    body: bytes,
    *,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Check a received webhook (``headers`` with lower-case names); raises
    ``InvalidSignature``. Several space-separated signatures may be given (secret
    rotation): one valid ``v1`` signature is enough."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not timestamp or not given:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    if abs(now - sent_at) > tolerance_s:
        raise InvalidSignature("webhook-timestamp is too far from now (a replay?)")
    expected = sign(secret, msg_id, sent_at, body)
    for candidate in given.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate, expected):
            return
    raise InvalidSignature("no valid signature")
