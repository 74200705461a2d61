"""Following one task: its events from the task stream, folded into states, from the
first event on, so that any point of the task's history can be resumed from.

Each state carries the stream sequence of the event that produced it (the SSE event id).
``Emission`` decides, purely, what a follower sends: without a resume point, the state
once caught up with the stream, then every later state; with one (``Last-Event-ID``),
every state after it, none skipped. It ends after a final state.

No follower creates a NATS consumer, and an idle one costs nothing:

- the task's events are *read* with direct gets (``read_events``: one request returns the
  events after a sequence, each with how many follow);
- ``TaskFeed`` tells the followers of this process when a task has a new event: one core
  subscription on the task's subjects per followed task (interest only, no server-side
  consumer), shared by all its followers here and dropped with the last of them. A
  signal makes each follower read what is new; nothing is read while nothing happens.

A core subscriber may hear of an event a moment before the stream has stored it: a signal
that finds nothing new is read again shortly (``_STALE_RETRIES``), and every follower also
reads again after ``SAFETY_S`` of silence (a signal lost with a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from pixelbus.contracts.events import AnyEvent, decode_event
from pixelbus.contracts.fold import apply
from pixelbus.contracts.subjects import SUBJECT_ROOT, TASK_STREAM, sanitize_token
from pixelbus.contracts.task import TaskState
from pixelbus.runtime.direct import direct_batch

__all__ = [
    "Emission",
    "TaskFeed",
    "Update",
    "follow_task",
    "read_events",
    "task_events_filter",
    "wait_final",
]

#: A follower reads again after this long without a signal.
SAFETY_S = 15.0
_STALE_RETRIES = 6  # 10 ms doubling: about 0.6 s in all

log = structlog.get_logger("pixelbus.follow")


@dataclass(frozen=True, slots=True)
class Update:
    seq: int
    state: TaskState


def task_events_filter(task_id: str) -> str:
    """Every event of one task, whatever its environment, workflow and kind."""
    return f"{SUBJECT_ROOT}.*.*.*.{sanitize_token(task_id)}"


@dataclass
class Emission:
    """What to send for each folded event (pure)."""

    after: int | None = None
    caught_up: bool = False
    done: bool = False

    def on_event(self, seq: int, state: TaskState, pending: int) -> bool:
        """Whether the state after event ``seq`` is sent; ``pending``: events not yet read."""
        was_caught_up = self.caught_up
        if pending == 0:
            self.caught_up = True
        send = seq > self.after if self.after is not None else was_caught_up or self.caught_up
        if self.caught_up and state.is_final:
            self.done = True
        return send


class TaskFeed:
    """Signals new events of followed tasks to the followers of this process."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._watched: dict[str, _Watch] = {}

    @property
    def subscriptions(self) -> int:
        """Tasks followed in this process right now (one subscription each)."""
        return len(self._watched)

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set on each new event of the task while the block runs (subscribed
        before the block starts: nothing published from then on is missed)."""
        watch = self._watched.get(task_id)
        if watch is None:
            watch = self._watched[task_id] = _Watch()
            watch.subscribing = asyncio.ensure_future(
                self._nc.subscribe(task_events_filter(task_id), cb=watch.notify)
            )
        subscribing = watch.subscribing
        assert subscribing is not None
        changed = asyncio.Event()
        watch.listeners.add(changed)
        try:
            await asyncio.shield(subscribing)
            yield changed
        finally:
            watch.listeners.discard(changed)
            if not watch.listeners and self._watched.get(task_id) is watch:
                del self._watched[task_id]
                with contextlib.suppress(Exception):
                    await (await subscribing).unsubscribe()


@dataclass(eq=False)
class _Watch:
    listeners: set[asyncio.Event] = field(default_factory=set)
    subscribing: asyncio.Future[Subscription] | None = None

    async def notify(self, msg: Msg) -> None:
        for listener in self.listeners:
            listener.set()


async def read_events(
    nc: Client, task_id: str, from_seq: int, *, limit: int = 256
) -> list[tuple[int, AnyEvent, int]]:
    """The task's events at or after ``from_seq`` (at most ``limit``): ``(stream sequence,
    event, how many more there are)``.

    Two direct gets: the first event, whose ``Nats-Num-Pending`` says how many follow,
    then exactly those. A batch asking for more than there are makes the server search
    the rest of the stream for the missing ones (≈ 10 ms at 400,000 events); asking for
    exactly what is there answers in a fraction of a millisecond at any size.
    """
    subject_filter = task_events_filter(task_id)
    first = await _direct_batch(nc, subject_filter, from_seq, 1)
    if not first or first[-1][2] == 0 or limit <= 1:
        return first
    seq, _, pending = first[-1]
    return first + await _direct_batch(nc, subject_filter, seq + 1, min(pending, limit - 1))


async def _direct_batch(
    nc: Client, subject_filter: str, from_seq: int, batch: int
) -> list[tuple[int, AnyEvent, int]]:
    request = {"seq": max(1, from_seq), "batch": batch, "next_by_subj": subject_filter}
    events: list[tuple[int, AnyEvent, int]] = []
    for msg in await direct_batch(nc, TASK_STREAM, request):
        headers = msg.headers or {}
        seq = int(headers.get("Nats-Sequence", "0"))
        try:
            event = decode_event(msg.data)
        except Exception as exc:
            log.error("undecodable event skipped", seq=seq, error=str(exc))
            continue
        events.append((seq, event, int(headers.get("Nats-Num-Pending", "0"))))
    return events


async def follow_task(
    nc: Client, feed: TaskFeed, task_id: str, *, after: int | None = None
) -> AsyncIterator[Update]:
    """Yield the task's states (see ``Emission``) until a final one has been sent."""
    emission = Emission(after=after)
    state: TaskState | None = None
    next_seq = 1
    async with feed.watch(task_id) as changed:
        stale = 0
        while True:
            changed.clear()
            batch = await read_events(nc, task_id, next_seq)
            for seq, event, pending in batch:
                next_seq = seq + 1
                state = apply(state, event)
                if emission.on_event(seq, state, pending):
                    yield Update(seq, state)
                if emission.done:
                    return
            if batch and batch[-1][2] > 0:
                continue  # more than one batch behind
            if not batch and stale and stale <= _STALE_RETRIES:
                # signalled, yet nothing new: the stream is about to store it
                await asyncio.sleep(0.01 * 2**stale)
                stale += 1
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAFETY_S):
                    await changed.wait()
            stale = 1 if changed.is_set() else 0


async def wait_final(nc: Client, feed: TaskFeed, task_id: str, timeout: float) -> TaskState | None:
    """The task's state once final, or its latest one when ``timeout`` runs out (None when
    it has no event yet): a follower like any other, for a bounded wait."""
    latest: TaskState | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            async for update in follow_task(nc, feed, task_id):
                latest = update.state
    return latest
