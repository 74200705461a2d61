"""The projector: folds the task event stream into the KV bucket (task id → state).

Correct with several replicas at once (they share one durable consumer and write with
compare-and-swap: a stale revision re-reads and re-folds), after restarts (the fold is
idempotent, so a redelivered batch changes nothing) and from nothing (``rebuild``).
Writes are batched per task: one KV read and at most one write per task per batch, and
none at all when the folded state is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.events import AnyEvent, decode_event
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import PROJECTOR_CONSUMER, STATE_BUCKET, TASK_STREAM
from pixelbus.runtime.state import encode_state, read_state

__all__ = ["Projector", "fold_into_kv"]

log = structlog.get_logger("pixelbus.projector")

_CAS_ATTEMPTS = 20


async def fold_into_kv(kv: KeyValue, task_id: str, events: list[AnyEvent]) -> None:
    """Fold ``events`` into the stored state of ``task_id`` with compare-and-swap."""
    for _ in range(_CAS_ATTEMPTS):
        state, revision = await read_state(kv, task_id)
        new_state = fold(events, state)
        assert new_state is not None
        data = encode_state(new_state)
        if state is not None and data == encode_state(state):
            return
        try:
            if revision == 0:
                await kv.create(task_id, data)
            else:
                await kv.update(task_id, data, last=revision)
            return
        except KeyWrongLastSequenceError:
            continue  # another replica wrote first: re-read and re-fold
    raise RuntimeError(f"projector: gave up on {task_id} after {_CAS_ATTEMPTS} CAS conflicts")


class Projector:
    def __init__(self, js: JetStreamContext, *, batch: int = 512) -> None:
        self._js = js
        self._batch = batch
        self._stopping = asyncio.Event()
        self.projected = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kv = await self._js.key_value(STATE_BUCKET)
        sub = await self._js.pull_subscribe_bind(durable=PROJECTOR_CONSUMER, stream=TASK_STREAM)
        log.info("projector started")
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self._batch, timeout=1.0)
                except (FetchTimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    log.warning("projector fetch failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                await self.project(kv, msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def project(self, kv: KeyValue, msgs: list[Msg]) -> None:
        by_task: dict[str, list[AnyEvent]] = defaultdict(list)
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except Exception as exc:
                log.error("undecodable event skipped", subject=msg.subject, error=str(exc))
                continue
            by_task[event.task_id].append(event)
        results = await asyncio.gather(
            *(fold_into_kv(kv, task_id, events) for task_id, events in by_task.items()),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # Leave the batch unacked: it is redelivered and re-folded (idempotent).
            log.warning("projector batch failed; will be redelivered", error=str(failed[0]))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=0.5)
            return
        for msg in msgs:
            await msg.ack()
        self.projected += len(msgs)
