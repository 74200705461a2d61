"""``Client``: the pixelbus API, blocking. It drives an ``AsyncClient`` on a private event
loop in a thread of its own, so both clients are one implementation; a call costs a hop to
that thread (microseconds beside the HTTP request) and works in any thread, a notebook's
with a running loop included."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from pixelbus.client.async_client import AsyncClient
from pixelbus.client.task import Task

__all__ = ["Client"]

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """``AsyncClient.method`` as a blocking method of ``Client``."""

    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._async, *args, **kwargs))

    functools.update_wrapper(run, method)
    return run


async def _next(stream: AsyncGenerator[Task, None]) -> Task | None:
    return await anext(stream, None)


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self._async = AsyncClient(
            base_url, api_key=api_key, timeout=timeout, transport=transport, trust_env=trust_env
        )
        self.base_url = self._async.base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pixelbus-client", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # interrupted (Ctrl-C): the call stops too
            future.cancel()
            raise

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Task]:
        """Every state of the task until it is final, resuming a dropped connection."""
        stream = self._async.events(task_id, last_event_id=last_event_id)
        try:
            while (task := self._run(_next(stream))) is not None:
                yield task
        finally:
            if not self._loop.is_closed():
                self._run(stream.aclose())

    def face_swap(self, source: str, target: str, **options: Any) -> Task:
        return self._run(self._async.face_swap(source, target, **options))

    def comfy(self, graph: dict[str, Any], **options: Any) -> Task:
        return self._run(self._async.comfy(graph, **options))

    create = _blocking(AsyncClient.create)
    get = _blocking(AsyncClient.get)
    list = _blocking(AsyncClient.list)
    cancel = _blocking(AsyncClient.cancel)
    webhooks = _blocking(AsyncClient.webhooks)
    wait = _blocking(AsyncClient.wait)  # on_progress is called on the client's thread
    download = _blocking(AsyncClient.download)
    fetch_task = _blocking(AsyncClient.fetch_task)
    report_progress = _blocking(AsyncClient.report_progress)
    complete_task = _blocking(AsyncClient.complete_task)
    fail_task = _blocking(AsyncClient.fail_task)
