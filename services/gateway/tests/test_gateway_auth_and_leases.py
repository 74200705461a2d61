"""Who is calling (``Principal``, ``KeyStore.authenticate`` before any key is looked up),
the signed lease tokens of external consumers, and the webhook URL admitted at creation.
Pure: no server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from ipaddress import ip_network

import pytest
from fastapi import HTTPException

from pixelbus.contracts.keys import ADMIN, SCOPES, TASKS_READ, TASKS_WRITE, format_token
from pixelbus.contracts.validation import TaskSpec, ValidationFailed
from pixelbus.gateway.auth import ANONYMOUS, KeyStore, Principal
from pixelbus.gateway.leases import Lease, LeaseError, sign_lease, verify_lease
from pixelbus.gateway.webhook_admission import admit_webhook
from pixelbus.media.ssrf import SsrfPolicy

# -- principals ----------------------------------------------------------------------------


def test_a_principal_may_use_its_scopes_and_an_admin_every_one() -> None:
    reader = Principal(owner="acme", scopes=frozenset({TASKS_READ}))
    admin = Principal(owner="ops", scopes=frozenset({ADMIN}))
    assert reader.may(TASKS_READ) and not reader.may(TASKS_WRITE)
    assert all(admin.may(scope) for scope in SCOPES)


def test_a_tenant_sees_its_own_tasks_and_an_admin_everyone_s() -> None:
    acme = Principal(owner="acme", scopes=frozenset({TASKS_READ}))
    anonymous = Principal(owner=ANONYMOUS, scopes=frozenset({TASKS_READ}))
    admin = Principal(owner="ops", scopes=frozenset({ADMIN}))
    assert acme.sees("acme") and not acme.sees("globex") and not acme.sees(None)
    assert anonymous.sees(None)  # a task without an owner is the anonymous tenant's
    assert admin.sees("acme") and admin.sees(None) and admin.sees_all
    assert not acme.sees_all


# -- authentication ------------------------------------------------------------------------


def test_open_mode_without_a_key_is_the_anonymous_tenant_with_every_scope() -> None:
    principal = KeyStore().authenticate(None, open_mode=True)
    assert principal.owner == ANONYMOUS and principal.key_id is None
    assert principal.scopes == frozenset(SCOPES)


@pytest.mark.parametrize(
    ("authorization", "open_mode", "says"),
    [
        (None, False, "an API key is required"),
        ("", False, "an API key is required"),
        ("Basic dXNlcjpwYXNz", True, "not 'Bearer <pixelbus API key>'"),
        ("Bearer not-a-pixelbus-key", True, "not 'Bearer <pixelbus API key>'"),
        (f"Bearer {format_token('0123456789ab', 'x' * 43)}", True, "unknown API key"),
    ],
)
def test_a_missing_malformed_or_unknown_key_is_a_401(
    authorization: str | None, open_mode: bool, says: str
) -> None:
    """A key that is sent is checked even in open mode."""
    with pytest.raises(HTTPException) as refused:
        KeyStore().authenticate(authorization, open_mode=open_mode)
    assert refused.value.status_code == 401
    assert says in refused.value.detail
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}


# -- leases --------------------------------------------------------------------------------

SECRET = "s3cret-shared-by-every-replica"


def lease() -> Lease:
    return Lease(
        task_id="task_1",
        reply="$JS.ACK.PIXELBUS_TASKS.pool-comfy.1.7.7.0.0",
        attempt=1,
        consumer="gpu-box-1",
        environment="comm",
        workflow="txt2img",
    )


def test_a_signed_lease_verifies_to_itself() -> None:
    original = lease()
    assert verify_lease(sign_lease(original, SECRET), SECRET) == original


def test_each_new_lease_has_its_own_id() -> None:
    assert lease().lease_id != lease().lease_id


def test_a_lease_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(LeaseError, match="invalid lease token"):
        verify_lease(sign_lease(lease(), "another secret"), SECRET)


def test_an_altered_lease_is_refused() -> None:
    """A client that rewrites the body (another task, another ack subject) keeps the old
    signature, which no longer matches."""
    body, mac = sign_lease(lease(), SECRET).split(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields["task_id"] = "someone_elses_task"
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    with pytest.raises(LeaseError, match="invalid lease token"):
        verify_lease(f"{forged}.{mac}", SECRET)


@pytest.mark.parametrize("token", ["", "no-dot-at-all", "!!!.???"])
def test_a_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(LeaseError):
        verify_lease(token, SECRET)


def test_a_signed_body_that_is_not_a_lease_is_refused_as_malformed() -> None:
    """Correctly signed (by whoever holds the secret) but not a lease: never a crash."""
    body = b'{"task_id": "t"}'
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    with pytest.raises(LeaseError, match="malformed"):
        verify_lease(f"{b64(body)}.{b64(mac)}", SECRET)


# -- webhook URL at creation -----------------------------------------------------------------


def spec(webhook_url: str | None) -> TaskSpec:
    return TaskSpec(
        task_id=None,
        workflow="probe",
        environment="face_swap",
        input_data={},
        webhook_url=webhook_url,
    )


@pytest.mark.parametrize(
    "url", [None, "https://hooks.example.com/pixelbus", "https://93.184.216.34/hook"]
)
def test_a_task_without_a_webhook_or_with_a_public_one_is_admitted(url: str | None) -> None:
    admit_webhook(SsrfPolicy(), spec(url))  # raises nothing


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/hook",
        "ftp://hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
    ],
)
def test_an_unreachable_or_internal_webhook_is_a_422_naming_the_field(url: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        admit_webhook(SsrfPolicy(), spec(url))
    (error,) = refused.value.errors
    assert error.loc == ("body", "webhook_url")
    assert error.msg  # the guard's reason, shown to the client


def test_an_allowed_network_admits_its_webhooks_but_never_cloud_metadata() -> None:
    policy = SsrfPolicy(allow_networks=(ip_network("127.0.0.0/8"), ip_network("169.254.0.0/16")))
    admit_webhook(policy, spec("http://127.0.0.1:9000/hook"))
    with pytest.raises(ValidationFailed):
        admit_webhook(policy, spec("http://169.254.169.254/latest/meta-data"))
