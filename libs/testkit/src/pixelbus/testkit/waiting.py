"""Waiting on the thing a test expects (an event, a KV state), always with a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from pixelbus.contracts.events import AnyEvent, decode_event
from pixelbus.contracts.subjects import SUBJECT_ROOT
from pixelbus.contracts.task import TaskState
from pixelbus.runtime.state import decode_state

__all__ = ["EventLog", "eventually", "wait_for_state"]

T = TypeVar("T")


class EventLog:
    """Every task event published while it is open (a core NATS subscription)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, AnyEvent]] = []
        self._changed = asyncio.Condition()

    @classmethod
    async def open(cls, nc: Client, subject: str = f"{SUBJECT_ROOT}.>") -> EventLog:
        log = cls()

        async def on_msg(msg: Msg) -> None:
            log.events.append((msg.subject, decode_event(msg.data)))
            async with log._changed:
                log._changed.notify_all()

        await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        return log

    def of(self, task_id: str, kind: type[T] | None = None) -> list[T]:
        return [
            e  # type: ignore[misc]
            for _, e in self.events
            if e.task_id == task_id and (kind is None or isinstance(e, kind))
        ]

    async def wait_for(
        self, predicate: Callable[[AnyEvent], bool], timeout: float = 10
    ) -> AnyEvent:
        async def seen() -> AnyEvent:
            async with self._changed:
                while True:
                    for _, event in self.events:
                        if predicate(event):
                            return event
                    await self._changed.wait()

        return await asyncio.wait_for(seen(), timeout)


async def wait_for_state(
    kv: KeyValue,
    task_id: str,
    predicate: Callable[[TaskState], bool],
    timeout: float = 10,
) -> TaskState:
    """Watch the task's KV key until its state satisfies ``predicate``."""
    watcher = await kv.watch(task_id)
    try:

        async def seen() -> TaskState:
            while True:
                entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
                if entry is None or entry.value is None:
                    continue
                state = decode_state(entry.value)
                if predicate(state):
                    return state

        return await asyncio.wait_for(seen(), timeout)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10) -> T:
    """Re-run ``check`` (for things with no event to wait on) until it returns a value."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.01
    while True:
        value = await check()
        if value is not None:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
