"""Streaming a durable pull consumer: ``PullConsumer``, and the loops built on it.

How the clients do it, and what we picked:

- nats.py's ``fetch(n, timeout)`` sends one pull request and returns when ``n`` messages
  came or the request expired: a batch that does not fill holds its first message back
  for the whole expiry, and nothing is asked for while a batch is being worked on.
- nats.go's ``Consume``/``Messages`` keep a buffer of credit open on the server (several
  pull requests may be outstanding), ask for more when what is outstanding drops below a
  threshold (half of the buffer by default), and send ``idle_heartbeat`` with every
  request so that a request lost with a connection is noticed within two heartbeats.

``PullConsumer`` is the nats.go shape, sized by what the process can work on: ``credit``
messages at most are asked for, delivered-but-not-taken, or held by the caller at any
time (``release`` gives one back), so a worker with N slots never holds more than N tasks
and an idle slot is filled the moment a message is there. Credit is topped up when at
least ``threshold`` of it is free (or whenever nothing is outstanding), with one publish
and no round trip. A request that ends (expiry, a leader change) says with the
``Nats-Pending-Messages`` header how much of its credit it leaves unused; a reconnect or a
silence past two heartbeats drops what was outstanding and asks again.

Measured on this kind of machine (bare round trip: publish → consume → ack → reply, 128
slots, one process): see ``tests/bench.py`` and the notes of the fast-path issue.

``dispatch``/``consume`` run one handler task per message (bounded by the credit);
``DurableLoop`` is a background loop over one durable consumer; ``keep_alive`` sends
in-progress acks while long work runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from pixelbus.runtime.connection import subscribe_direct

__all__ = [
    "DurableLoop",
    "PullConsumer",
    "PullGate",
    "consume",
    "dispatch",
    "keep_alive",
    "stop_when_set",
]

log = structlog.get_logger("pixelbus.pull")

#: Waits until the process can take work (e.g. a backend is healthy and has room) and says
#: how many messages it can take now (at least 1). Nothing is asked for while it waits.
PullGate = Callable[[], Awaitable[int]]

_HEARTBEAT = "100"
_EXPECTED_ENDS = frozenset({"404", "408"})  # no messages / request expired
_PENDING = "Nats-Pending-Messages"
_GATED_EXPIRES_S = 1.0


class PullConsumer:
    """One durable pull consumer, streamed: ``next``/``batch`` take messages,
    ``release`` gives their credit back, ``stop`` ends ``next``, ``close`` hands back
    (naks) what was delivered but never taken."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        *,
        credit: int,
        threshold: int | None = None,
        expires_s: float = 30.0,
        heartbeat_s: float = 5.0,
        gate: PullGate | None = None,
    ) -> None:
        self._nc = nc
        self._durable = durable
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._credit = max(1, credit)
        self._threshold = max(1, threshold if threshold is not None else self._credit // 4)
        if gate is not None:
            # An open request delivers whatever the gate said before it closed: gated
            # consumers ask briefly, so a closed gate holds within a second.
            expires_s = min(expires_s, _GATED_EXPIRES_S)
        self._expires_ns = int(expires_s * 1e9)
        self._heartbeat_s = min(heartbeat_s, expires_s / 2)  # the server's own rule
        self._gate = gate
        self._inbox = ""
        self._sub: Subscription | None = None
        self._queue: deque[Msg] = deque()
        self._asked = 0  # asked for, not delivered yet
        self._held = 0  # taken by the caller, not released yet
        self._waiter: asyncio.Future[None] | None = None
        self._pulling: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopped = False
        self._quiet_until = 0.0  # after a refused request: wait before asking again
        self._last_heard = 0.0
        self._reconnects = 0
        self.requests_sent = 0

    @property
    def queued(self) -> int:
        """Messages delivered to this process and not taken yet."""
        return len(self._queue)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        self._reconnects = self._nc.stats.get("reconnects", 0)
        self._inbox = self._nc.new_inbox()
        self._sub = await subscribe_direct(self._nc, self._inbox, self._on_message)
        self._watchdog = asyncio.create_task(self._watch())
        self._top_up()

    def stop(self) -> None:
        """``next`` answers ``None`` from now on; nothing more is asked for."""
        self._stopped = True
        self._wake()

    async def close(self) -> None:
        """Stop, stop listening, then release (nak) what was delivered but not taken.

        Unsubscribing first matters: the server drops a pull request whose reply subject
        has no interest left, so an open request stops delivering to us (a nak while the
        request is still open would come straight back to it).
        """
        self.stop()
        for task in (self._watchdog, self._pulling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        while self._queue:
            with contextlib.suppress(Exception):
                await self._queue.popleft().nak()

    async def next(self) -> Msg | None:
        """The next message (its credit held until ``release``), or ``None`` once stopped."""
        while True:
            if self._stopped:
                return None
            if self._queue and self._held < self._credit:
                self._held += 1
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def batch(self, limit: int) -> list[Msg]:
        """At least one message and at most ``limit``: what has arrived, taken at once."""
        first = await self.next()
        if first is None:
            return []
        return [first, *self.take(limit - 1)]

    async def arrival(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a message to take; whether one is there."""
        if not (self._queue and self._held < self._credit) and not self._stopped:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(timeout_s, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
        return bool(self._queue) and self._held < self._credit and not self._stopped

    def take(self, limit: int) -> list[Msg]:
        """What has arrived, up to ``limit`` messages, without waiting (maybe none)."""
        taken: list[Msg] = []
        while self._queue and len(taken) < limit and self._held < self._credit:
            self._held += 1
            taken.append(self._queue.popleft())
        return taken

    def release(self, count: int = 1) -> None:
        """The caller is done with ``count`` taken messages: their credit may be asked again."""
        self._held = max(0, self._held - count)
        if self._queue:
            self._wake()
        self._top_up()

    # -- credit ------------------------------------------------------------------------

    def _free(self) -> int:
        return self._credit - self._asked - len(self._queue) - self._held

    def _top_up(self) -> None:
        if self._stopped or self._pulling is not None or self._sub is None:
            return
        free = self._free()
        if free > 0 and (free >= self._threshold or self._asked == 0):
            self._pulling = asyncio.create_task(self._pull())

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopped:
                if loop.time() < self._quiet_until:
                    return  # the watchdog asks again when the pause is over
                free = self._free()
                if free <= 0 or (free < self._threshold and self._asked > 0):
                    return
                if self._gate is not None:
                    allowed = await self._gate()
                    free = min(self._free(), max(1, allowed))
                    if free <= 0:
                        return
                body = {
                    "batch": free,
                    "expires": self._expires_ns,
                    "idle_heartbeat": int(self._heartbeat_s * 1e9),
                }
                self._asked += free
                self.requests_sent += 1
                try:
                    await self._nc.publish(
                        self._next_subject, json.dumps(body).encode(), reply=self._inbox
                    )
                except Exception as exc:  # not sent: the watchdog asks again shortly
                    self._asked = max(0, self._asked - free)
                    self._quiet_until = loop.time() + 0.5
                    log.warning("pull request not sent", durable=self._durable, error=str(exc))
                    return
        finally:
            self._pulling = None

    def _on_message(self, msg: Msg) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        headers = msg.headers
        if not msg.reply and headers and (status := headers.get("Status")):
            if status != _HEARTBEAT:
                self._request_ended(status, headers)
            return
        self._asked = max(0, self._asked - 1)
        self._queue.append(msg)
        self._wake()

    def _request_ended(self, status: str, headers: dict[str, str]) -> None:
        pending = headers.get(_PENDING)
        if pending is not None and pending.isdigit():
            self._asked = max(0, self._asked - int(pending))
        else:  # we cannot tell how much ended with it: assume all, ask again
            self._asked = 0
        if status not in _EXPECTED_ENDS:
            # Leadership change, consumer deleted, too many waiting requests…: pause.
            self._quiet_until = asyncio.get_running_loop().time() + 0.5
            log.warning(
                "pull request ended",
                durable=self._durable,
                status=status,
                description=headers.get("Description"),
            )
        self._top_up()

    async def _watch(self) -> None:
        """Drop outstanding credit that a reconnect or a silence made void; keep asking."""
        loop = asyncio.get_running_loop()
        tick = min(1.0, self._heartbeat_s / 2)
        while not self._stopped:
            await asyncio.sleep(tick)
            reconnects = self._nc.stats.get("reconnects", 0)
            if reconnects != self._reconnects:
                self._reconnects = reconnects
                self._asked = 0  # requests die with the connection that sent them
            elif self._asked and loop.time() - self._last_heard > 2 * self._heartbeat_s + tick:
                log.info("pull requests went silent; asking again", durable=self._durable)
                self._asked = 0
                self._last_heard = loop.time()
            self._top_up()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def dispatch(
    consumer: PullConsumer, handle: Callable[[Msg], Coroutine[Any, Any, None]]
) -> set[asyncio.Task[None]]:
    """Run ``handle(msg)`` in a task of its own for every message until the consumer is
    stopped; at most its credit run at once. Returns the tasks still running."""
    running: set[asyncio.Task[None]] = set()

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        consumer.release()

    while (msg := await consumer.next()) is not None:
        task = asyncio.create_task(handle(msg))
        running.add(task)
        task.add_done_callback(finished)
    return running


async def consume(
    nc: Client,
    stream: str,
    durable: str,
    handle: Callable[[Msg], Coroutine[Any, Any, None]],
    *,
    concurrency: int,
    stop: asyncio.Event,
    grace_s: float = 30.0,
    gate: PullGate | None = None,
) -> None:
    """``dispatch`` from a durable consumer until ``stop``; then stop asking (releasing
    what was delivered but not started) and give running handlers ``grace_s`` to end."""
    consumer = PullConsumer(nc, stream, durable, credit=concurrency, gate=gate)
    await consumer.start()
    stopper = asyncio.create_task(stop_when_set(stop, consumer))
    try:
        running = await dispatch(consumer, handle)
    finally:
        stopper.cancel()
        await consumer.close()
    if running:
        await asyncio.wait(running, timeout=grace_s)


async def stop_when_set(event: asyncio.Event, consumer: PullConsumer) -> None:
    """A task's body: ``consumer.stop()`` once ``event`` is set."""
    await event.wait()
    consumer.stop()


class keep_alive:  # a lowercase name: it reads as a function in ``with keep_alive(msg, 10):``
    """In-progress acks every ``interval_s`` while the body runs, so that long work is not
    redelivered. Costs a timer, not a task, when the body is quick."""

    __slots__ = ("_handle", "_interval_s", "_msg", "_sending")

    def __init__(self, msg: Msg, interval_s: float) -> None:
        self._msg = msg
        self._interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def __enter__(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        self._handle = loop.call_later(self._interval_s, self._tick)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._msg.in_progress()


class DurableLoop:
    """A background loop over one durable consumer: ``process`` each message, at most
    ``concurrency`` at once, until ``stop()``. Anything ``process`` lets escape is logged
    and the message released with a short delay, so it comes back (never lost)."""

    stream: str
    durable: str
    what: str = "message"

    def __init__(self, nc: Client, *, concurrency: int = 8, grace_s: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._concurrency = concurrency
        self._grace_s = grace_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await consume(
            self._nc,
            self.stream,
            self.durable,
            self._handle,
            concurrency=self._concurrency,
            stop=self._stopping,
            grace_s=self._grace_s,
        )

    async def _handle(self, msg: Msg) -> None:
        try:
            await self.process(msg)
        except Exception:
            log.exception(f"{self.what} not handled; will be redelivered", durable=self.durable)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def process(self, msg: Msg) -> None:
        raise NotImplementedError
