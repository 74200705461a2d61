"""``AsyncClient``: the pixelbus API with asyncio (httpx.AsyncClient); it sends the calls
that ``pixelbus.client.calls`` describes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pixelbus.client import calls
from pixelbus.client.calls import Call, check, unreachable
from pixelbus.client.errors import PixelbusError, WaitTimeout
from pixelbus.client.task import LeasedTask, Output, Task, face_swap_body, workflow_body

__all__ = ["AsyncClient"]

T = TypeVar("T")
ProgressCallback = Callable[[Task], Awaitable[None] | None]


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=calls.headers(api_key),
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,  # proxies and CA bundle from the environment (httpx's)
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        return call.answer(response)

    @contextlib.asynccontextmanager
    async def _stream(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> AsyncIterator[httpx.Response]:
        async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                check(response)
            yield response

    async def create(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Task:
        return await self._send(calls.create(body, idempotency_key))

    async def face_swap(self, source: str, target: str, **options: Any) -> Task:
        """``source``/``target``: URLs or local files (sent as ``data:`` URIs)."""
        return await self.create(face_swap_body(source, target, **options))

    async def comfy(self, graph: dict[str, Any], **options: Any) -> Task:
        return await self.create(workflow_body(graph, **options))

    async def get(self, task_id: str) -> Task:
        return await self._send(calls.get(task_id))

    async def list(
        self, *, limit: int = 20, before: str | None = None, status: str | None = None
    ) -> tuple[list[Task], str | None]:
        return await self._send(calls.list_tasks(limit, before, status))

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return await self._send(calls.cancel(task_id, reason))

    async def webhooks(self, task_id: str) -> dict[str, Any]:
        return await self._send(calls.webhooks(task_id))

    async def events(
        self, task_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[Task]:
        """Every state of the task until it is final; a dropped connection is resumed
        with ``Last-Event-ID`` (three tries in a row at most)."""
        follow = calls.Follow(task_id, last_event_id)
        while True:
            error: httpx.HTTPError | None = None
            try:
                async with self._stream(follow.path, follow.headers(), timeout=None) as response:
                    async for line in response.aiter_lines():
                        state = follow.feed(line)
                        if follow.ended:
                            return
                        if state is not None:
                            yield state
            except httpx.HTTPError as exc:
                error = exc
            await asyncio.sleep(follow.retry_in(self.base_url, error))

    async def wait(
        self,
        task_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Task:
        """The final task; ``on_progress`` is called with every state on the way."""

        async def follow() -> Task:
            async for task in self.events(task_id):
                if on_progress is not None:
                    maybe = on_progress(task)
                    if maybe is not None:
                        await maybe
                if task.is_final:
                    return task
            return await self.get(task_id)

        try:
            return await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise WaitTimeout(f"task {task_id} was not final after {timeout} s") from None

    async def download(self, url: str, dest: Path) -> Path:
        try:
            async with self._stream(url) as response:
                with dest.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        except OSError as exc:
            raise PixelbusError(f"cannot write {dest}: {exc}") from None
        return dest

    async def fetch_task(
        self, *, environment: str = "comm", wait: float = 10, consumer: str = "external"
    ) -> LeasedTask | None:
        """Lease a task of ``environment``'s pool, waiting up to ``wait`` s (keep the
        client's timeout above it); None when none came."""
        return await self._send(calls.fetch_task(environment, wait, consumer))

    async def report_progress(
        self,
        lease: LeasedTask,
        *,
        fraction: float | None = None,
        node: str | None = None,
        message: str | None = None,
    ) -> float:
        """Progress, which extends the lease: the seconds it now has. ``ApiError`` 409:
        the lease is lost (expired, cancelled or completed)."""
        return await self._send(calls.report_progress(lease, fraction, node, message))

    async def complete_task(
        self,
        lease: LeasedTask,
        outputs: Sequence[Output] = (),
        *,
        result: dict[str, Any] | None = None,
    ) -> None:
        await self._send(calls.complete_task(lease, outputs, result))

    async def fail_task(
        self,
        lease: LeasedTask,
        message: str,
        *,
        code: str = "consumer_error",
        retryable: bool = False,
    ) -> bool:
        """Whether the failure is final (not retryable, or the last attempt)."""
        return await self._send(calls.fail_task(lease, message, code, retryable))
