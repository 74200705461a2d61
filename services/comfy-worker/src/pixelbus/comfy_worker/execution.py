"""One prompt on one ComfyUI server: submit, follow, reconcile, withdraw.

``run_prompt`` subscribes to the prompt's messages, submits it, relays progress and ends
with its ``/history`` entry. It survives the protocol's races:

- the history is read when the final ``executing {node: null}`` arrives (it is written
  before that message), and still retried briefly;
- a dropped WebSocket is waited for (``reconnect_s``), then the prompt is looked up in
  ``/history`` and ``/queue``: finished, still there, or lost (``PromptLost``: run again);
- a silent socket is covered by asking ``/history`` every ``poll_interval_s``.

Each ``executed`` message (a node's UI output: the files it wrote) is handed to
``on_output`` as it arrives, so that the caller can start reading those files while the
rest of the graph runs; the ``/history`` entry stays the record of what the run produced.

When the run is cancelled (task cancelled, or its timeout) the prompt is withdrawn:
deleted from the queue while pending, interrupted (that prompt id only) while running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from pixelbus.comfy_worker.backends import Backend
from pixelbus.comfy_worker.errors import (
    BackendUnavailable,
    ComfyError,
    PromptLost,
)
from pixelbus.comfy_worker.progress import ProgressTracker, Snapshot
from pixelbus.comfy_worker.protocol import (
    HistoryEntry,
    Message,
    execution_failure,
    interrupted,
    rejection,
)
from pixelbus.comfy_worker.stream import DISCONNECTED, RECONNECTED

__all__ = ["OnOutput", "RunLimits", "Withdrawal", "run_prompt", "withdraw"]

log = structlog.get_logger("pixelbus.comfy_worker.execution")

Report = Callable[[Snapshot], Awaitable[None]]
#: ``(node id, output)`` of an ``executed`` message (output is None for a cached node
#: without UI)
OnOutput = Callable[[str, Any], None]
Withdrawal = str  # "deleted", "interrupted", "finished", "unreachable"


@dataclass(frozen=True, slots=True)
class RunLimits:
    reconnect_s: float = 10.0
    poll_interval_s: float = 5.0
    history_wait_s: float = 3.0


async def run_prompt(
    backend: Backend,
    graph: dict[str, Any],
    prompt_id: str,
    tracker: ProgressTracker,
    report: Report,
    limits: RunLimits,
    on_output: OnOutput | None = None,
) -> HistoryEntry:
    """Run ``graph`` as ``prompt_id`` on ``backend``; its history entry when it succeeded.

    Raises ``PromptRejected``, ``ExecutionFailed``, ``PromptInterrupted``,
    ``BackendUnavailable``/``PromptLost``. On cancellation the prompt is withdrawn first.
    """
    queue = backend.stream.subscribe(prompt_id)
    submitted = False
    try:
        if not await backend.stream.wait_connected(limits.reconnect_s):
            raise BackendUnavailable(f"ComfyUI at {backend.url}: no WebSocket connection")
        submitted = True  # from here on it may be on the server, even if the call fails
        node_errors = await backend.client.submit(
            graph, client_id=backend.stream.client_id, prompt_id=prompt_id
        )
        if node_errors:
            # A 200 with node errors runs only the valid outputs: not what was asked.
            await withdraw(backend, prompt_id)
            refusal = {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "some outputs failed validation",
                },
                "node_errors": node_errors,
            }
            raise rejection(200, refusal, "")
        return await _follow(backend, prompt_id, queue, tracker, report, limits, on_output)
    except asyncio.CancelledError:
        if submitted:
            outcome = await _withdraw_quietly(backend, prompt_id)
            log.info("prompt withdrawn", prompt_id=prompt_id, backend=backend.url, how=outcome)
        raise
    finally:
        backend.stream.unsubscribe(prompt_id)


async def _follow(
    backend: Backend,
    prompt_id: str,
    queue: asyncio.Queue[Message],
    tracker: ProgressTracker,
    report: Report,
    limits: RunLimits,
    on_output: OnOutput | None,
) -> HistoryEntry:
    wait_s = limits.poll_interval_s
    while True:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the message does, and a cancelled task must stop.
            async with asyncio.timeout(wait_s):
                message = await queue.get()
        except TimeoutError:  # a silent socket: look the prompt up as after a reconnect
            message = Message(RECONNECTED, {})
        kind = message.type
        if kind == "execution_error":
            raise execution_failure(message.data)
        if kind == "execution_interrupted":
            raise interrupted(message.data)
        if kind == "executing" and message.data.get("node") is None:
            return _outcome(await _history(backend, prompt_id, limits.history_wait_s))
        if kind == DISCONNECTED:
            if not await backend.stream.wait_connected(limits.reconnect_s):
                raise BackendUnavailable(
                    f"ComfyUI at {backend.url} went away during the run and did not come "
                    f"back within {limits.reconnect_s:g} s"
                )
            continue  # the RECONNECTED message follows
        if kind == RECONNECTED:
            entry = await _reconcile(backend, prompt_id)
            if entry is not None:
                return _outcome(entry)
            continue
        if kind == "executed" and on_output is not None:
            on_output(str(message.data.get("node")), message.data.get("output"))
        if kind == "execution_success":
            wait_s = min(wait_s, 0.5)  # the final message is due; do not wait long for it
        snapshot = tracker.apply(message)
        if snapshot is not None:
            await report(snapshot)


async def _reconcile(backend: Backend, prompt_id: str) -> HistoryEntry | None:
    """Finished (its entry), still queued or running (None), or lost (``PromptLost``)."""
    entry = await backend.client.history(prompt_id)
    if entry is not None:
        return entry
    if await backend.client.queue_place(prompt_id) is not None:
        return None
    entry = await backend.client.history(prompt_id)  # it may have finished in between
    if entry is not None:
        return entry
    raise PromptLost(
        f"the prompt vanished from ComfyUI at {backend.url} (restarted?): it will run again"
    )


async def _history(backend: Backend, prompt_id: str, wait_s: float) -> HistoryEntry:
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        entry = await backend.client.history(prompt_id)
        if entry is not None:
            return entry
        if time.monotonic() > deadline:
            entry = await _reconcile(backend, prompt_id)
            if entry is None:
                raise BackendUnavailable(
                    f"ComfyUI at {backend.url} reported the prompt done, no history"
                )
            return entry
        await asyncio.sleep(delay)  # the history race: written just after the message
        delay = min(delay * 2, 0.5)


def _outcome(entry: HistoryEntry) -> HistoryEntry:
    if entry.status == "success":
        return entry
    if (error := entry.message("execution_error")) is not None:
        raise execution_failure(error)
    if (stop := entry.message("execution_interrupted")) is not None:
        raise interrupted(stop)
    raise ComfyError(f"ComfyUI ended the prompt with status {entry.status!r}")


async def withdraw(backend: Backend, prompt_id: str) -> Withdrawal:
    """Take the prompt off the server: delete it while pending, interrupt it (by its id,
    never an empty body) while running. Re-checks, since it may start in between."""
    for _ in range(5):
        place = await backend.client.queue_place(prompt_id)
        if place is None:
            return "finished"
        if place == "pending":
            await backend.client.delete_queued(prompt_id)
            if await backend.client.queue_place(prompt_id) is None:
                return "deleted"
            continue  # it started meanwhile: interrupt it
        await backend.client.interrupt(prompt_id)
        return "interrupted"
    return "unknown"


async def _withdraw_quietly(backend: Backend, prompt_id: str) -> Withdrawal:
    try:
        async with asyncio.timeout(10):
            return await withdraw(backend, prompt_id)
    except (ComfyError, TimeoutError) as exc:
        log.warning("could not withdraw prompt", prompt_id=prompt_id, error=str(exc))
        return "unreachable"
