"""Pulling from a durable consumer, handing each message over the moment it arrives.

nats.py's ``fetch(n)`` holds back the messages of a long poll until ``n`` of them arrived
or the request expired, so with ``n`` = free slots every hop of a task waited up to the
whole expiry. ``PullFeed`` keeps one pull request outstanding at a time and yields every
message as soon as the server delivers it.

Each request has its own reply subject, so the end of an older request (one given up
after a reconnect) is not taken for the end of the current one. Messages themselves
carry their stream subject, not the reply subject: any message delivered is handed out
by the next ``pull``, and what is still queued when the feed closes is released (nak),
so it goes straight to another puller instead of waiting out its ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["DurableLoop", "PullFeed", "consume", "dispatch"]

log = structlog.get_logger("pixelbus.pull")

_HEARTBEAT = "100"
_REQUEST_DONE = frozenset({"404", "408"})  # no messages (no_wait) / request expired


class PullFeed:
    """One durable pull consumer, read a request at a time (``pull``)."""

    def __init__(self, nc: Client, stream: str, durable: str, *, expires_s: float = 2.0) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._expires_s = expires_s
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = ""
        self._request = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._queue.put)

    async def close(self) -> None:
        """Stop listening, then release (nak) every message delivered but not handed out.

        Unsubscribing first matters: the server drops a pull request whose reply subject
        has no interest left, so an open request stops delivering to us. (A nak while the
        request is still open would come straight back to it.)
        """
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if _status(msg) is None:
                with contextlib.suppress(Exception):
                    await msg.nak()

    @property
    def queued(self) -> int:
        """Messages delivered to this process and not yet handed out."""
        return self._queue.qsize()

    async def pull(self, batch: int, stop: asyncio.Event | None = None) -> AsyncIterator[Msg]:
        """Ask for up to ``batch`` messages; yield each one as it arrives.

        Ends when ``batch`` messages came, the request expired, or ``stop`` is set (the
        request is then left open; ``close`` releases what it delivers).
        """
        assert self._sub is not None, "start() first"
        self._request += 1
        reply = f"{self._inbox}.{self._request}"
        expires_ns = int(self._expires_s * 1e9)
        body = json.dumps({"batch": batch, "expires": expires_ns}).encode()
        await self._nc.publish(self._next_subject, body, reply=reply)
        # The server answers by ``expires`` at the latest; the margin covers a slow link.
        deadline = time.monotonic() + self._expires_s + 1.0
        received = 0
        while received < batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return
            msg = await self._next(remaining, stop)
            if msg is None:
                return
            status = _status(msg)
            if status is not None:
                if msg.subject != reply or status == _HEARTBEAT:
                    continue  # the end of an older request, or a heartbeat
                if status not in _REQUEST_DONE:
                    log.warning("pull request ended", status=status, description=_description(msg))
                return
            received += 1
            yield msg

    async def _next(self, timeout: float, stop: asyncio.Event | None) -> Msg | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        get = asyncio.ensure_future(self._queue.get())
        waits: set[asyncio.Future[object]] = {get}  # type: ignore[arg-type]
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waits.add(stopper)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if stopper is not None:
            stopper.cancel()
        if get in done:
            return get.result()
        get.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await get
        if get.done() and not get.cancelled():  # raced: a message came as we gave up
            self._queue.put_nowait(get.result())
        return None


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def _description(msg: Msg) -> str | None:
    return msg.headers.get("Description") if msg.headers else None


async def dispatch(
    feed: PullFeed,
    handle: Callable[[Msg], Coroutine[Any, Any, None]],
    *,
    concurrency: int,
    stop: asyncio.Event,
) -> set[asyncio.Task[None]]:
    """Run ``handle(msg)`` in its own task for every message, ``concurrency`` at most at
    once, until ``stop`` is set. Each pull asks for as many messages as slots are free.

    Returns the tasks still running when it stopped; the caller decides how long to wait.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        slots.release()

    while not stop.is_set():
        if not await _acquire_or_stop(slots, stop):
            break
        free = 1
        while free < concurrency and not slots.locked():
            await slots.acquire()
            free += 1
        try:
            async for msg in feed.pull(free, stop):
                free -= 1
                task = asyncio.create_task(handle(msg))
                running.add(task)
                task.add_done_callback(finished)
        except Exception as exc:  # connection trouble: back off, keep going
            log.warning("pull failed", error=str(exc))
            await asyncio.sleep(0.5)
        for _ in range(free):
            slots.release()
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
) -> None:
    """``dispatch`` from a durable consumer until ``stop``; then stop pulling (releasing
    what was delivered but not started) and give running handlers ``grace_s`` to end."""
    feed = PullFeed(nc, stream, durable)
    await feed.start()
    try:
        running = await dispatch(feed, handle, concurrency=concurrency, stop=stop)
    finally:
        await feed.close()
    if running:
        await asyncio.wait(running, timeout=grace_s)


async def _acquire_or_stop(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take one slot; ``False`` (and no slot) when ``stop`` is set first."""
    acquire = asyncio.ensure_future(slots.acquire())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if acquire.done() and not acquire.cancelled():
        if stop.is_set():
            slots.release()
            return False
        return True
    acquire.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquire
    if acquire.done() and not acquire.cancelled():
        slots.release()
    return False


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
