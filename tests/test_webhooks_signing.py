"""Standard Webhooks signatures, the retry schedule and the delivery decisions (pure)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from pixelbus.contracts.webhooks import (
    DeliveryAttempt,
    DeliveryLog,
    InvalidSignature,
    decode_secret,
    sign,
    signature_headers,
    verify,
)
from pixelbus.runtime.errors import SettingsError
from pixelbus.webhooks.dispatcher import decide
from pixelbus.webhooks.sender import SendResult
from pixelbus.webhooks.settings import WebhookSettings

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_its_own_signature_and_refuses_tampering() -> None:
    headers = signature_headers(SECRET, "msg_1", 1000, b'{"a":1}')
    verify(SECRET, headers, b'{"a":1}', now=1010)
    with pytest.raises(InvalidSignature):
        verify(SECRET, headers, b'{"a":2}', now=1010)
    with pytest.raises(InvalidSignature):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, b'{"a":1}', now=1010)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(InvalidSignature):
        verify(other, headers, b'{"a":1}', now=1010)


def test_verify_refuses_old_timestamps_and_accepts_any_of_several_signatures() -> None:
    headers = signature_headers(SECRET, "msg_1", 1000, b"{}")
    with pytest.raises(InvalidSignature, match="replay"):
        verify(SECRET, headers, b"{}", now=1000 + 301)
    rotated = {**headers, "webhook-signature": "v1,bm90IGl0 " + headers["webhook-signature"]}
    verify(SECRET, rotated, b"{}", now=1000)
    with pytest.raises(InvalidSignature, match="missing"):
        verify(SECRET, {}, b"{}", now=1000)


def test_secrets_must_be_whsec_base64() -> None:
    assert decode_secret(SECRET) == b"k" * 32
    for bad in ("k" * 32, "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            decode_secret(bad)
    with pytest.raises(SettingsError, match="PIXELBUS_WEBHOOK_SECRET"):
        WebhookSettings.from_env({"PIXELBUS_WEBHOOK_SECRET": "plain"})
    with pytest.raises(SettingsError, match="production"):
        WebhookSettings.from_env({"APP_ENV": "production"})


def test_per_owner_secret_wins_over_the_global_one_and_is_never_shown() -> None:
    mine = "whsec_" + base64.b64encode(b"m" * 32).decode()
    settings = WebhookSettings.from_env(
        {"PIXELBUS_WEBHOOK_SECRET": SECRET, "PIXELBUS_WEBHOOK_SECRETS": f"acme={mine}"}
    )
    assert settings.secret_for("acme") == mine
    assert settings.secret_for("other") == SECRET
    assert settings.secret_for(None) == SECRET
    shown = f"{settings.redacted()} {settings!r}"
    assert SECRET not in shown and mine not in shown


def test_decisions() -> None:
    settings = WebhookSettings(max_attempts=3, backoff_s=1, backoff_max_s=10)
    ok = SendResult(True, False, 200, None, 1.0)
    down = SendResult(False, True, 503, "answered 503", 1.0)
    refused = SendResult(False, False, None, "loopback", 0.1)
    assert decide(ok, 1, settings, 0.0) == ("delivered", 0.0)
    # the lifecycle's backoff: doubling from 1 s, jittered into [1/2, 1) of it by the draw
    assert decide(down, 1, settings, 0.0) == ("retrying", 0.5)
    assert decide(down, 2, settings, 0.5) == ("retrying", 1.5)
    assert decide(down, 3, settings, 0.0) == ("failed", 0.0)
    assert decide(refused, 1, settings, 0.0) == ("failed", 0.0)


def test_log_status() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def attempt(delivery: str, n: int, outcome: str) -> DeliveryAttempt:
        return DeliveryAttempt(
            delivery_id=delivery, event="completed", attempt=n, at=at, outcome=outcome
        )

    assert DeliveryLog(task_id="t").status() == "none"
    retrying = DeliveryLog(task_id="t", attempts=(attempt("a", 1, "retrying"),))
    assert retrying.status() == "pending"
    landed = DeliveryLog(task_id="t", attempts=(*retrying.attempts, attempt("a", 2, "delivered")))
    assert landed.status() == "delivered"
    lost = DeliveryLog(task_id="t", attempts=(*landed.attempts, attempt("b", 1, "failed")))
    assert lost.status() == "failed"


def test_create_request_webhook_fields() -> None:
    from pixelbus.contracts.validation import (
        ValidationFailed,
        decode_create_request,
        validate_create,
    )

    def spec(**fields: object) -> object:
        body = {"workflow": "probe", "environment": "face_swap", **fields}
        return validate_create(decode_create_request(json.dumps(body).encode()))

    plain = spec()
    assert plain.webhook_url is None and plain.webhook_events == ()
    default = spec(webhook_url="https://hooks.example.com/x")
    assert default.webhook_events == ("completed", "failed", "cancelled")
    chosen = spec(webhook_url="http://h.example.com", webhook_events=["progress", "progress"])
    assert chosen.webhook_events == ("progress",)
    for bad, field in (
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
        ({"webhook_url": "https://e.com/" + "x" * 3000}, "webhook_url"),
        ({"webhook_url": "https://e.com", "webhook_events": []}, "webhook_events"),
        ({"webhook_url": "https://e.com", "webhook_events": ["done"]}, "webhook_events"),
        ({"webhook_events": ["completed"]}, "webhook_events"),
    ):
        with pytest.raises(ValidationFailed) as refused:
            spec(**bad)
        assert refused.value.errors[0].loc == ("body", field), bad
