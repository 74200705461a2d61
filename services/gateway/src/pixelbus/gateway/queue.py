"""A pending task's place in its pool's queue, from the pool consumer's pending count.

``queue_position``: 1 = the next task the pool hands out, 0 = already handed to a
worker (starting, or waiting for a retry). The tasks queued after this one are counted
by a short-lived consumer that starts just after its ``TaskCreated``.
"""

from __future__ import annotations

import contextlib

import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from pixelbus.contracts.subjects import TASK_STREAM, pool_for_environment, task_subject
from pixelbus.contracts.task import TaskState, TaskStatus

log = structlog.get_logger("pixelbus.queue")

__all__ = ["queue_position", "queue_position_or_none"]


async def queue_position(js: JetStreamContext, state: TaskState) -> int | None:
    """The position of a PENDING task, or None (not pending, unknown pool)."""
    if state.status is not TaskStatus.PENDING or state.environment is None:
        return None
    try:
        pool = pool_for_environment(state.environment)
    except KeyError:
        return None
    subject = task_subject(state.environment, state.workflow or "", "created", state.task_id)
    try:
        created = await js.get_last_msg(TASK_STREAM, subject)
        info = await js.consumer_info(TASK_STREAM, pool.durable)
    except NotFoundError:
        return None
    if created.seq is None:
        return None
    if info.delivered.stream_seq >= created.seq:
        return 0
    after = await js.add_consumer(
        TASK_STREAM,
        ConsumerConfig(
            filter_subject=pool.filter_subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=created.seq + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0,
            num_replicas=0,
        ),
    )
    with contextlib.suppress(Exception):
        await js.delete_consumer(TASK_STREAM, after.name)
    return max(1, (info.num_pending or 0) - (after.num_pending or 0))


async def queue_position_or_none(js: JetStreamContext, state: TaskState) -> int | None:
    """``queue_position``, or None when it cannot be had now: a position is a nicety,
    never a reason to fail the request that shows it."""
    if state.status is not TaskStatus.PENDING:
        return None
    try:
        return await queue_position(js, state)
    except Exception as exc:
        log.warning("queue position unavailable", task_id=state.task_id, error=str(exc))
        return None
