"""The one idempotent ``ensure`` step: streams, durable consumers, KV and Object Store.

Every setting is explicit (file storage, limits retention, duplicate window, max age,
replicas), so a cluster never runs on a library default by accident. Running ``ensure``
again creates what is missing and updates what differs; it never deletes a consumer in
use (that would lose its position and pending acks): only ``remove_legacy_consumers``
deletes, and only consumers that nothing pulls any more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from pixelbus.contracts.subjects import (
    ADVISORY_STREAM,
    EXHAUSTED_CONSUMER,
    IDEMPOTENCY_BUCKET,
    INDEX_BUCKET,
    KEYS_BUCKET,
    LEASES_BUCKET,
    MAX_DELIVERIES_ADVISORIES,
    OUTPUTS_BUCKET,
    POOLS,
    PROJECTOR_CONSUMER,
    QUOTAS_BUCKET,
    RATES_BUCKET,
    STATE_BUCKET,
    SUBJECT_ROOT,
    TASK_STREAM,
    UPLOADER_CONSUMER,
    WEBHOOK_DISPATCHER_CONSUMER,
    WEBHOOK_LOG_BUCKET,
    WEBHOOK_PLANNER_CONSUMER,
    WEBHOOK_STREAM,
    WEBHOOK_SUBJECT_ROOT,
    WORKERS_BUCKET,
    event_filter,
)
from pixelbus.contracts.video import (
    VIDEO_ASSEMBLER_CONSUMER,
    VIDEO_BUCKET,
    VIDEO_CHUNKS_CONSUMER,
    VIDEO_CHUNKS_FILTER,
    VIDEO_DONE_FILTER,
    VIDEO_STREAM,
    VIDEO_SUBJECT_ROOT,
)
from pixelbus.runtime.settings import BusSettings

__all__ = [
    "ensure",
    "ensure_webhook_dispatcher",
    "ensure_webhook_queue",
    "ensure_webhooks",
    "remove_legacy_consumers",
]

log = structlog.get_logger("pixelbus.provision")

_STREAM_IN_USE = 10058  # "stream name already in use with a different configuration"
WORKER_PRESENCE_TTL_S = 30.0
LEASE_TTL_S = 24 * 3600.0
RATE_WINDOW_TTL_S = 10.0  # per-second request counters only matter for a second


#: Back-pressure per pool: at most this many tasks handed out and not yet acked.
POOL_MAX_ACK_PENDING = 64


async def _ensure_stream(
    js: JetStreamContext,
    settings: BusSettings,
    name: str,
    description: str,
    subject: str,
    retention: RetentionPolicy,
    **own: Any,
) -> None:
    """Create or update a stream: what every pixelbus stream states (file storage, the
    oldest dropped first, the bus's age limit and replicas), then ``own`` settings."""
    config = StreamConfig(
        name=name,
        description=description,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age_s,
        num_replicas=settings.replicas,
        **own,
    )
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise
        await js.update_stream(config)
        log.info("stream updated", stream=config.name)


async def _ensure_backing_stream(
    js: JetStreamContext, stream: str, create: Callable[[], Awaitable[object]], **wanted: object
) -> None:
    """A KV bucket's or Object Store's stream: ``create`` it when missing, else update
    what differs from ``wanted``."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await create()
        return
    config = info.config.evolve(**wanted)
    if config != info.config:
        await js.update_stream(config)
        log.info("stream updated", stream=stream)


async def _ensure_kv(
    js: JetStreamContext,
    bucket: str,
    settings: BusSettings,
    *,
    ttl: float | None,
    history: int = 1,
    direct: bool = False,
) -> None:
    """``direct``: readers may ask for many entries at once without a consumer (the
    workers' presence, listed by ``/api/health``)."""
    config = KeyValueConfig(
        bucket=bucket,
        history=history,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=settings.replicas,
        direct=direct,
    )
    await _ensure_backing_stream(
        js,
        f"KV_{bucket}",
        lambda: js.create_key_value(config),
        max_age=ttl or 0,
        num_replicas=settings.replicas,
        max_msgs_per_subject=history,
        allow_direct=direct,
    )


async def _ensure_object_store(js: JetStreamContext, settings: BusSettings) -> None:
    config = ObjectStoreConfig(
        ttl=settings.outputs_ttl_s, storage=StorageType.FILE, replicas=settings.replicas
    )
    await _ensure_backing_stream(
        js,
        f"OBJ_{OUTPUTS_BUCKET}",
        lambda: js.create_object_store(OUTPUTS_BUCKET, config=config),
        max_age=settings.outputs_ttl_s,
        num_replicas=settings.replicas,
    )


async def _add_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    filter_subject: str,
    *,
    ack_wait: float,
    max_deliver: int,
    max_ack_pending: int,
) -> None:
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            num_replicas=0,
        ),
    )


#: "no suitable peers for placement" and its kin: a cluster still forming, or a node
#: restarting. Worth waiting for at start; everything in ``ensure`` is idempotent.
_PLACEMENT_ERRORS = frozenset({10005, 10008, 10023})
_PLACEMENT_PATIENCE_S = 60.0


async def ensure(js: JetStreamContext, settings: BusSettings) -> None:
    """Create or update every JetStream asset pixelbus uses. Safe to run concurrently.

    While the cluster cannot place replicas yet (it is forming, or a peer is restarting)
    or answers too late, the whole step is retried for up to a minute.
    """
    deadline = time.monotonic() + _PLACEMENT_PATIENCE_S
    pause = 0.2
    while True:
        try:
            await _ensure_all(js, settings)
            return
        except (BadRequestError, ServiceUnavailableError, nats.errors.TimeoutError) as exc:
            # a meta leader busy placing (or electing) can also answer too late
            code = getattr(exc, "err_code", None)
            if isinstance(exc, BadRequestError) and code not in _PLACEMENT_ERRORS:
                raise
            if time.monotonic() + pause > deadline:
                raise
            log.warning("jetstream not ready for provisioning; retrying", error=str(exc))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


async def _ensure_all(js: JetStreamContext, settings: BusSettings) -> None:
    await _ensure_stream(
        js,
        settings,
        TASK_STREAM,
        "pixelbus task events",
        f"{SUBJECT_ROOT}.>",
        RetentionPolicy.LIMITS,
        duplicate_window=settings.duplicate_window_s,
        max_msgs=-1,
        max_bytes=-1,
        max_msg_size=1024 * 1024,
        # direct gets: a task's events and queue ranks are read without a consumer
        allow_direct=True,
    )
    for pool in POOLS:
        await _add_consumer(
            js,
            TASK_STREAM,
            pool.durable,
            pool.filter_subject,
            ack_wait=settings.ack_wait_for(pool.name),
            max_deliver=settings.max_deliver,
            max_ack_pending=POOL_MAX_ACK_PENDING,
        )
    await _add_consumer(
        js,
        TASK_STREAM,
        PROJECTOR_CONSUMER,
        f"{SUBJECT_ROOT}.>",
        # short like every lease: after a projector dies, its unacked batch is folded
        # by the next one within seconds (folding is idempotent by sequence)
        ack_wait=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=20_000,
    )
    await _add_consumer(
        js,
        TASK_STREAM,
        UPLOADER_CONSUMER,
        event_filter("outputs"),
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=256,
    )
    await _ensure_stream(
        js,
        settings,
        ADVISORY_STREAM,
        "max-deliveries advisories of the pixelbus task stream",
        MAX_DELIVERIES_ADVISORIES,
        RetentionPolicy.LIMITS,
    )
    await _add_consumer(
        js,
        ADVISORY_STREAM,
        EXHAUSTED_CONSUMER,
        MAX_DELIVERIES_ADVISORIES,
        ack_wait=30,
        max_deliver=-1,
        max_ack_pending=1000,
    )
    await _ensure_kv(js, STATE_BUCKET, settings, ttl=settings.stream_max_age_s)
    await _ensure_kv(js, INDEX_BUCKET, settings, ttl=settings.stream_max_age_s)
    await _ensure_kv(js, IDEMPOTENCY_BUCKET, settings, ttl=settings.idempotency_ttl_s)
    await _ensure_kv(js, LEASES_BUCKET, settings, ttl=LEASE_TTL_S)
    await _ensure_kv(js, WORKERS_BUCKET, settings, ttl=WORKER_PRESENCE_TTL_S, direct=True)
    await _ensure_kv(js, KEYS_BUCKET, settings, ttl=None, history=5)
    await _ensure_kv(js, RATES_BUCKET, settings, ttl=RATE_WINDOW_TTL_S)
    await _ensure_kv(js, QUOTAS_BUCKET, settings, ttl=None)
    await _ensure_object_store(js, settings)
    log.info("jetstream provisioned", stream=TASK_STREAM, replicas=settings.replicas)


async def _ensure_work_queue(
    js: JetStreamContext, settings: BusSettings, name: str, description: str, subject_root: str
) -> None:
    """A work queue under ``subject_root``: each message kept until a consumer acks it."""
    await _ensure_stream(
        js,
        settings,
        name,
        f"{description} (a work queue)",
        f"{subject_root}.>",
        RetentionPolicy.WORK_QUEUE,
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_video(js: JetStreamContext, settings: BusSettings) -> None:
    """The video fan-out (``pixelbus.contracts.video``): its work queue, the chunk
    workers' and the assembler's consumers, and the jobs' records. Only the face-swap
    workers use them (and only they may create them)."""
    description = "pixelbus video chunks to swap and chunks swapped"
    await _ensure_work_queue(js, settings, VIDEO_STREAM, description, VIDEO_SUBJECT_ROOT)
    await _add_consumer(
        js,
        VIDEO_STREAM,
        VIDEO_CHUNKS_CONSUMER,
        VIDEO_CHUNKS_FILTER,
        ack_wait=settings.ack_wait_for("faceswap"),
        # one more than the task's attempts: a chunk whose workers all died says so
        # on its last delivery instead of vanishing (see the chunk worker)
        max_deliver=settings.max_deliver + 1,
        max_ack_pending=256,
    )
    await _add_consumer(
        js,
        VIDEO_STREAM,
        VIDEO_ASSEMBLER_CONSUMER,
        VIDEO_DONE_FILTER,
        ack_wait=settings.ack_wait_for("faceswap"),
        max_deliver=-1,
        max_ack_pending=256,
    )
    await _ensure_kv(js, VIDEO_BUCKET, settings, ttl=settings.stream_max_age_s)


async def ensure_webhook_queue(js: JetStreamContext, settings: BusSettings) -> None:
    """The webhook delivery queue alone: the projector's step (it queues the jobs; a
    missing queue would hold up its batches, the state with them)."""
    description = "pixelbus webhook deliveries still to make"
    await _ensure_work_queue(js, settings, WEBHOOK_STREAM, description, WEBHOOK_SUBJECT_ROOT)


async def ensure_webhooks(js: JetStreamContext, settings: BusSettings) -> None:
    """The webhook delivery queue and the per-task delivery log: run by the gateway (it
    reads the log) and the webhooks service (it delivers and writes the log). The
    dispatcher's consumer is the webhooks service's own step
    (``ensure_webhook_dispatcher``): its limits are webhook settings."""
    await ensure_webhook_queue(js, settings)
    await _ensure_kv(js, WEBHOOK_LOG_BUCKET, settings, ttl=settings.stream_max_age_s)


async def ensure_webhook_dispatcher(
    js: JetStreamContext, *, max_attempts: int, ack_wait_s: float
) -> None:
    """The dispatcher's durable consumer of the delivery queue (webhooks service)."""
    await _add_consumer(
        js,
        WEBHOOK_STREAM,
        WEBHOOK_DISPATCHER_CONSUMER,
        f"{WEBHOOK_SUBJECT_ROOT}.>",
        ack_wait=ack_wait_s,
        max_deliver=max_attempts + 2,  # a crash on the last attempt still ends in the log
        max_ack_pending=1000,
    )


#: Consumers of earlier versions that nothing pulls any more. Round 1's gateway planned
#: webhooks from a second full-stream consumer; the projector now plans them inside its
#: own batches, so that consumer would only pile up pending messages.
LEGACY_CONSUMERS: tuple[tuple[str, str], ...] = ((TASK_STREAM, WEBHOOK_PLANNER_CONSUMER),)


async def remove_legacy_consumers(js: JetStreamContext) -> list[str]:
    """Delete the ``LEGACY_CONSUMERS`` still there (the projector, at start); their names."""
    removed = []
    for stream, durable in LEGACY_CONSUMERS:
        try:
            await js.delete_consumer(stream, durable)
        except NotFoundError:
            continue
        removed.append(durable)
        log.info("legacy consumer removed", stream=stream, consumer=durable)
    return removed
