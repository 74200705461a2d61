"""One WebSocket per ComfyUI server and worker: messages routed to the prompt waiting
for them, reconnecting for ever with a short backoff.

ComfyUI sends a run's execution events only to the socket of the ``client_id`` the
prompt was submitted with, and a newer socket with the same id silences the older one, so
each worker process uses its own id. Every prompt subscribes *before* it is submitted
(its ``status`` and even ``execution_start`` may arrive before the POST answers), which
is why the worker chooses the prompt id itself. When the socket drops, every subscriber
gets a ``_disconnected`` message, and ``_reconnected`` once it is back: they reconcile
with ``/history`` and ``/queue``, since what was sent meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from pixelbus.comfy_worker.protocol import Message, parse_frame

__all__ = ["DISCONNECTED", "RECONNECTED", "PromptStream"]

log = structlog.get_logger("pixelbus.comfy_worker.stream")

DISCONNECTED = "_disconnected"
RECONNECTED = "_reconnected"
_BACKOFF_MAX_S = 1.0


class PromptStream:
    def __init__(
        self, base_url: str, client_id: str, *, on_change: Callable[[], None] = lambda: None
    ) -> None:
        scheme, _, rest = base_url.partition("://")
        ws_scheme = "wss" if scheme == "https" else "ws"
        self.url = f"{ws_scheme}://{rest.rstrip('/')}/ws?clientId={client_id}"
        self.client_id = client_id
        self._on_change = on_change
        self._subscribers: dict[str, asyncio.Queue[Message]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connections = 0
        self.queue_remaining: int | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        return self.connected

    def subscribe(self, prompt_id: str) -> asyncio.Queue[Message]:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._subscribers[prompt_id] = queue
        return queue

    def unsubscribe(self, prompt_id: str) -> None:
        self._subscribers.pop(prompt_id, None)

    def _broadcast(self, kind: str) -> None:
        for queue in self._subscribers.values():
            queue.put_nowait(Message(kind, {}))

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async with connect(
                    self.url,
                    max_size=None,
                    open_timeout=5,
                    close_timeout=2,
                    ping_interval=20,
                    ping_timeout=20,
                ) as ws:
                    self.connections += 1
                    self._connected.set()
                    delay = 0.05
                    if self.connections > 1:
                        log.info("comfyui socket reconnected", url=self.url)
                        self._broadcast(RECONNECTED)
                    self._on_change()
                    async for frame in ws:
                        self._dispatch(frame)
            except (OSError, WebSocketException, TimeoutError) as exc:
                if self.connected:
                    log.warning(
                        "comfyui socket lost", url=self.url, error=str(exc) or type(exc).__name__
                    )
            finally:
                if self._connected.is_set():
                    self._connected.clear()
                    self._broadcast(DISCONNECTED)
                    self._on_change()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def _dispatch(self, frame: str | bytes) -> None:
        message = parse_frame(frame)
        if message is None:
            return
        if message.type == "status":
            info = (message.data.get("status") or {}).get("exec_info") or {}
            remaining = info.get("queue_remaining")
            self.queue_remaining = remaining if isinstance(remaining, int) else None
            return
        prompt_id = message.prompt_id
        if prompt_id is None:
            return  # binary frames, or the reconnect's ``executing`` without a prompt id
        queue = self._subscribers.get(prompt_id)
        if queue is not None:
            queue.put_nowait(message)
