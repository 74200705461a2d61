"""``CompletionSubscriber``: every completed task of the chosen workflows, handed to a
callback, through a durable JetStream consumer of the service's own.

The message is acked (and the server's confirmation awaited) only after the callback
returns, so a completion is never lost: a callback that raises is retried after
``retry_delay_s``, and one that was running when the process died is delivered again.
Stopping (``stop``) lets running callbacks finish and acks them, so a planned restart
delivers each completion exactly once. Several replicas of a service share the work by
using the same ``name``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pixelbus.completions.completion import Completion, completion_from
from pixelbus.contracts.events import decode_event
from pixelbus.contracts.subjects import TASK_STREAM, event_filter, sanitize_token
from pixelbus.runtime.pull import consume, keep_alive

__all__ = ["CompletionHandler", "CompletionSubscriber", "completion_subject"]

log = structlog.get_logger("pixelbus.completions")

CompletionHandler = Callable[[Completion], Awaitable[None]]


def completion_subject(kind: str = "completed", environment: str = "*", workflow: str = "*") -> str:
    """``pixelbus.tasks.<environment>.<workflow>.<kind>.*`` (``*``: any)."""
    return event_filter(kind, environment, workflow)


class CompletionSubscriber:
    def __init__(
        self,
        nc: Client,
        name: str,
        handler: CompletionHandler,
        *,
        environment: str = "*",
        workflow: str = "*",
        include_failed: bool = False,
        from_start: bool = True,
        concurrency: int = 1,
        ack_wait_s: float = 60.0,
        retry_delay_s: float = 5.0,
    ) -> None:
        """``name``: the durable consumer (``completions-<name>``), one per downstream
        service. ``include_failed``: final failures too (a second consumer on the
        ``failed`` subjects). ``from_start``: a new subscriber first receives the
        completions still in the stream; otherwise only those after it was created."""
        self._nc = nc
        self._js = nc.jetstream()
        self._handler = handler
        durable = f"completions-{sanitize_token(name)}"
        self._durables = {durable: completion_subject("completed", environment, workflow)}
        if include_failed:
            failed = completion_subject("failed", environment, workflow)
            self._durables[f"{durable}-failed"] = failed
        self._from_start = from_start
        self._concurrency = concurrency
        self._ack_wait_s = ack_wait_s
        self._retry_delay_s = retry_delay_s
        self._stopping = asyncio.Event()
        self.handled = 0

    def stop(self) -> None:
        """Stop pulling; running callbacks finish and are acked."""
        self._stopping.set()

    async def run(self) -> None:
        """Create the durable consumer(s) if missing, then deliver until ``stop``."""
        for durable, subject in self._durables.items():
            await self._js.add_consumer(
                TASK_STREAM,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    deliver_policy=DeliverPolicy.ALL if self._from_start else DeliverPolicy.NEW,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._ack_wait_s,
                    max_deliver=-1,
                    max_ack_pending=max(1, self._concurrency) * 4,
                ),
            )
        await asyncio.gather(*(self._consume(durable) for durable in self._durables))

    async def _consume(self, durable: str) -> None:
        await consume(
            self._nc,
            TASK_STREAM,
            durable,
            self._handle,
            concurrency=self._concurrency,
            stop=self._stopping,
            grace_s=self._ack_wait_s,
        )

    async def _handle(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable completion terminated", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        meta = msg.metadata
        completion = completion_from(
            event, msg.subject, stream_seq=meta.sequence.stream, delivery=meta.num_delivered
        )
        if completion is None:
            await msg.ack()
            return
        try:
            with keep_alive(msg, self._ack_wait_s / 3):  # a long callback keeps its message
                await self._handler(completion)
        except Exception as exc:
            log.warning(
                "completion callback failed; will be redelivered",
                task_id=completion.task_id,
                error=repr(exc),
                attempt=completion.delivery,
                outcome="retry",
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._retry_delay_s)
            return
        await msg.ack_sync()
        self.handled += 1
