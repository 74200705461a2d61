"""Relaying a task's progress, held back for its first moments.

A ComfyUI prompt often ends within a few dozen milliseconds; a progress event for it tells
nobody anything (the task's own completion follows at once) and costs an awaited publish
on the task's path, plus a fold in every reader of the stream. ``ProgressRelay`` keeps the
latest value to itself for ``delay_s`` after the task started: a task done by then reports
no progress at all; a longer one reports that latest value at ``delay_s`` and everything
after it as it comes (the worker runtime still coalesces to a few events a second).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

__all__ = ["ProgressRelay", "Send"]


class Send(Protocol):
    """How progress goes out: ``TaskContext.progress``."""

    async def __call__(
        self, fraction: float | None, *, node: str | None = None, message: str | None = None
    ) -> None: ...


class ProgressRelay:
    def __init__(self, send: Send, delay_s: float) -> None:
        self._send = send
        self._latest: tuple[float | None, str | None, str | None] | None = None
        self._open = delay_s <= 0
        self._timer: asyncio.Task[None] | None = (
            None if self._open else asyncio.create_task(self._open_after(delay_s))
        )

    async def report(
        self, fraction: float | None, *, node: str | None = None, message: str | None = None
    ) -> None:
        if self._open:
            await self._send(fraction, node=node, message=message)
        else:
            self._latest = (fraction, node, message)

    async def _open_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._open = True  # first: a report from now on goes out after this one
        latest, self._latest = self._latest, None
        if latest is not None:
            fraction, node, message = latest
            await self._send(fraction, node=node, message=message)

    async def close(self) -> None:
        """The task ended: what is still held back is dropped; a send under way is
        finished (its error, if any, is raised here, as a direct report would have)."""
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if self._open:
            await timer
            return
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer

    def cancel(self) -> None:
        """The task was cancelled: stop at once, a send under way included."""
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if timer.done():
            if not timer.cancelled():
                timer.exception()  # retrieved: the task's cancellation is what counts now
            return
        timer.cancel()
