"""Webhooks end to end: planned by the projector, delivered signed to a real receiver by
the webhooks service, retried by JetStream with backoff across a restart of the whole
stack (webhooks service included), refused by the SSRF guard, and marked failed once the
attempts are spent; every attempt in the task's delivery log."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pixelbus.contracts.subjects import (
    WEBHOOK_DISPATCHER_CONSUMER,
    WEBHOOK_LOG_BUCKET,
    WEBHOOK_STREAM,
)
from pixelbus.contracts.webhooks import DeliveryAttempt, DeliveryLog, WebhookJob, verify
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.provision import ensure_webhook_dispatcher
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.webhook_log import DeliveryLogStore
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.webhooks.service import WebhookService
from pixelbus.webhooks.settings import WebhookSettings
from tests.stack import Stack, running_stack
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"pixelbus-webhook-test-secret-32b").decode()
HOOK_ENV = {
    "PIXELBUS_WEBHOOK_SECRET": SECRET,
    "PIXELBUS_WEBHOOK_BACKOFF_S": "0.2",
    "PIXELBUS_SSRF_ALLOW_NETWORKS": "127.0.0.0/8",
}


def probe(url: str, **extra: Any) -> dict[str, Any]:
    return {"workflow": "probe", "environment": "face_swap", "webhook_url": url, **extra}


async def wait_for_log(stack: Stack, task_id: str, status: str, timeout: float = 30) -> DeliveryLog:
    """Watch the task's entry in the delivery-log bucket until it has ``status``."""
    kv = await stack.nc.jetstream().key_value(WEBHOOK_LOG_BUCKET)
    watcher = await kv.watch(task_id)
    try:

        async def seen() -> DeliveryLog:
            while True:
                entry = await watcher.updates(timeout=timeout)
                if entry is None or entry.value is None:
                    continue
                log = msgspec.json.decode(entry.value, type=DeliveryLog)
                if log.status() == status:
                    return log

        return await asyncio.wait_for(seen(), timeout)
    finally:
        await watcher.stop()


async def test_fourth_delivery_lands_signed_after_three_failures_and_a_restart(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with webhook_receiver(answers=[500, 503, 502]) as receiver:
        async with running_stack(nats_server.url, tmp_path / "a", **HOOK_ENV) as stack:
            created = await stack.http.post("/api/tasks/create", json=probe(receiver.url))
            assert created.status_code == 201, created.text
            task_id = created.json()["taskId"]
            await receiver.wait_for(2)
        # Every service (the dispatcher with them) is gone between the second and third
        # attempt; new ones carry on.
        async with running_stack(nats_server.url, tmp_path / "b", **HOOK_ENV) as stack:
            received = await receiver.wait_for(4)
            log = await wait_for_log(stack, task_id, "delivered")
            deliveries = (await stack.http.get(f"/api/tasks/{task_id}/webhooks")).json()
    assert [r.answered for r in received] == [500, 503, 502, 200]
    assert len(received) == 4  # nothing lost, nothing sent twice after the success
    last = received[-1]
    verify(SECRET, last.headers, last.body, now=int(time.time()))  # raises if invalid
    assert {r.headers["webhook-id"] for r in received} == {f"{task_id}:completed"}
    payload = json.loads(last.body)
    assert payload["type"] == "task.completed"
    assert payload["data"]["taskId"] == task_id and payload["data"]["status"] == "COMPLETED"
    assert [a.outcome for a in log.attempts] == ["retrying"] * 3 + ["delivered"]
    numbers = [a.attempt for a in log.attempts]
    # (a delivery handed to the stopping dispatcher but not started is released, and counts)
    assert numbers[0] == 1 and numbers == sorted(set(numbers)), numbers
    first, second = (a.next_attempt_in_s or 0.0 for a in log.attempts[:2])
    # the lifecycle's backoff: 0.2 s doubling, each jittered into [1/2, 1) of it
    assert 0.1 <= first < 0.2 and 0.2 <= second < 0.4, (first, second)
    assert deliveries["status"] == "delivered"
    assert [a["status_code"] for a in deliveries["attempts"]] == [500, 503, 502, 200]


async def test_progress_webhooks_when_asked_and_the_final_state_last(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        webhook_receiver() as receiver,
        running_stack(nats_server.url, tmp_path, **HOOK_ENV) as stack,
    ):
        body = probe(receiver.url, webhook_events=["started", "completed"])
        task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
        await wait_for_log(stack, task_id, "delivered")
        received = await receiver.wait_for(2)
    types = sorted(json.loads(r.body)["type"] for r in received)
    assert types == ["task.completed", "task.started"]
    for r in received:
        verify(SECRET, r.headers, r.body, now=int(time.time()))


async def test_private_webhook_urls_are_refused_at_creation(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in HOOK_ENV.items() if k != "PIXELBUS_SSRF_ALLOW_NETWORKS"}
    async with (
        webhook_receiver() as receiver,
        running_stack(nats_server.url, tmp_path, worker=False, uploader=False, **env) as stack,
    ):
        answers = {
            url: await stack.http.post("/api/tasks/create", json=probe(url))
            for url in (
                receiver.url,  # loopback
                "http://169.254.169.254/latest/meta-data/",
                "http://localhost:8080/hook",
                "http://user:pw@hooks.example.com/",
                "http://0x7f.1/hook",
            )
        }
    for url, answer in answers.items():
        assert answer.status_code == 422, url
        [error] = answer.json()["detail"]
        assert error["loc"] == ["body", "webhook_url"] and "refused" in error["msg"], error
    assert receiver.received == []


async def test_a_host_resolving_to_a_private_address_is_refused_at_delivery() -> None:
    """DNS decides at delivery time: a public-looking name that resolves to loopback is
    refused before any connection (the resolver is the guard's seam)."""
    from ipaddress import ip_address

    from pixelbus.media.ssrf import SsrfPolicy
    from pixelbus.webhooks.sender import WebhookSender

    async def rebinding(host: str, port: int) -> list[Any]:
        return [ip_address("127.0.0.1")]

    async with webhook_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        sender = WebhookSender(SsrfPolicy(), timeout_s=5, resolver=rebinding)
        try:
            result = await sender.post(f"http://hooks.example.com:{port}/hook", b"{}", {})
        finally:
            await sender.aclose()
    assert not result.ok and not result.retryable
    assert "resolves to 127.0.0.1" in (result.error or "")
    assert receiver.received == []


async def test_attempts_spent_end_in_a_final_failed_mark(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        webhook_receiver(answers=[500, 500, 500, 500]) as receiver,
        running_stack(
            nats_server.url, tmp_path, PIXELBUS_WEBHOOK_MAX_ATTEMPTS="2", **HOOK_ENV
        ) as stack,
    ):
        task_id = (await stack.http.post("/api/tasks/create", json=probe(receiver.url))).json()[
            "taskId"
        ]
        log = await wait_for_log(stack, task_id, "failed")
        shown = (await stack.http.get(f"/api/tasks/{task_id}/webhooks")).json()
    assert [(a.attempt, a.outcome) for a in log.attempts] == [(1, "retrying"), (2, "failed")]
    assert len(receiver.received) == 2
    assert shown["status"] == "failed"


async def test_bad_webhook_fields_are_422(nats_server: NatsServer, tmp_path: Path) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        bad_url = await stack.http.post("/api/tasks/create", json=probe("ftp://example.com/x"))
        bad_events = await stack.http.post(
            "/api/tasks/create", json=probe("https://example.com/h", webhook_events=["nope"])
        )
    assert bad_url.status_code == 422
    assert bad_url.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    assert bad_events.status_code == 422
    assert bad_events.json()["detail"][0]["loc"] == ["body", "webhook_events"]


async def test_a_dispatcher_dying_on_the_last_attempt_leaves_a_final_failed_mark(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The known case: the dispatcher dies during the last attempt, so that attempt leaves no
    outcome. The job comes back once more and ends the log with ``failed``, never
    ``pending`` for ever, without posting beyond the budget."""
    async with (
        webhook_receiver() as receiver,
        running_stack(
            nats_server.url,
            tmp_path,
            webhooks=False,
            PIXELBUS_WEBHOOK_MAX_ATTEMPTS="2",
            PIXELBUS_WEBHOOK_TIMEOUT_S="0.5",
            **HOOK_ENV,
        ) as stack,
    ):
        js = stack.nc.jetstream()
        await ensure_webhook_dispatcher(js, max_attempts=2, ack_wait_s=0.5)
        created = await stack.http.post("/api/tasks/create", json=probe(receiver.url))
        task_id = created.json()["taskId"]
        # Two dispatchers take the job and die before they record anything (never acked).
        doomed = await js.pull_subscribe_bind(
            durable=WEBHOOK_DISPATCHER_CONSUMER, stream=WEBHOOK_STREAM
        )
        for attempt in (1, 2):
            [msg] = await doomed.fetch(1, timeout=15)
            assert msg.metadata.num_delivered == attempt
        await doomed.unsubscribe()
        service = WebhookService(stack.nc, BusSettings.from_env(stack.env),
                                 WebhookSettings.from_env(stack.env))  # fmt: skip
        running = asyncio.create_task(service.run())
        try:
            log = await wait_for_log(stack, task_id, "failed")
        finally:
            service.stop()
            await asyncio.wait_for(running, 15)
    [last] = log.attempts
    assert (last.attempt, last.outcome) == (3, "failed")
    assert last.error is not None and "dispatcher stopped" in last.error
    assert receiver.received == []  # nothing posted beyond the two attempts of the budget


async def test_a_delivery_logged_before_its_dispatcher_died_is_not_posted_again(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The dispatcher posted, logged ``delivered`` and died before its ack: the job comes
    back, and the next dispatcher acks it from the log instead of posting a duplicate."""
    async with (
        webhook_receiver() as receiver,
        running_stack(nats_server.url, tmp_path, webhooks=False, **HOOK_ENV) as stack,
    ):
        js = stack.nc.jetstream()
        await ensure_webhook_dispatcher(js, max_attempts=3, ack_wait_s=0.5)
        created = await stack.http.post("/api/tasks/create", json=probe(receiver.url))
        task_id = created.json()["taskId"]
        doomed = await js.pull_subscribe_bind(
            durable=WEBHOOK_DISPATCHER_CONSUMER, stream=WEBHOOK_STREAM
        )
        [msg] = await doomed.fetch(1, timeout=15)
        job = msgspec.json.decode(msg.data, type=WebhookJob)
        store = DeliveryLogStore(await js.key_value(WEBHOOK_LOG_BUCKET))
        await store.append(
            task_id,
            DeliveryAttempt(delivery_id=job.delivery_id, event=job.event, attempt=1,
                            at=utcnow(), outcome="delivered", status_code=200),
        )  # fmt: skip
        await doomed.unsubscribe()  # dies without acking
        service = WebhookService(stack.nc, BusSettings.from_env(stack.env),
                                 WebhookSettings.from_env(stack.env))  # fmt: skip
        running = asyncio.create_task(service.run())
        try:
            deadline = time.monotonic() + 15
            while True:  # handed out a second time, and acked
                info = await js.consumer_info(WEBHOOK_STREAM, WEBHOOK_DISPATCHER_CONSUMER)
                if (info.delivered.consumer_seq or 0) >= 2 and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.05)
        finally:
            service.stop()
            await asyncio.wait_for(running, 15)
        log = await store.read(task_id)
    assert receiver.received == []
    assert [(a.attempt, a.outcome) for a in log.attempts] == [(1, "delivered")]
