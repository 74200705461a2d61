"""``AsyncClient``: the pixelbus API with asyncio (httpx.AsyncClient); the one
implementation, which the blocking ``Client`` drives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from pixelbus.client.errors import PixelbusError, WaitTimeout
from pixelbus.client.http import check, state_of, unreachable
from pixelbus.client.sse import SseParser
from pixelbus.client.task import LeasedTask, Output, Task, face_swap_body, workflow_body
from pixelbus.contracts.subjects import COMFY_ENVIRONMENT

__all__ = ["AsyncClient"]

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
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
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

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        return check(response)

    async def create(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Task:
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Task.from_json(
            await self._request("POST", "/api/tasks/create", json=body, headers=extra)
        )

    async def face_swap(self, source: str, target: str, **options: Any) -> Task:
        """``source``/``target``: URLs or local files (sent as ``data:`` URIs)."""
        return await self.create(face_swap_body(source, target, **options))

    async def comfy(self, graph: dict[str, Any], **options: Any) -> Task:
        return await self.create(workflow_body(graph, **options))

    async def get(self, task_id: str) -> Task:
        return Task.from_json(await self._request("GET", f"/api/tasks/{task_id}"))

    async def list(
        self, *, limit: int = 20, before: str | None = None, status: str | None = None
    ) -> tuple[list[Task], str | None]:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("before", before), ("status", status)) if v})
        page = await self._request("GET", "/api/tasks", params=params)
        return [Task.from_json(t) for t in page["tasks"]], page["next"]

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        params = {"reason": reason} if reason else {}
        return Task.from_json(
            await self._request("POST", f"/api/tasks/{task_id}/cancel", params=params)
        )

    async def webhooks(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/api/tasks/{task_id}/webhooks")
        return result

    async def events(
        self, task_id: str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[Task, None]:
        """Every state of the task until it is final; a dropped connection is resumed
        with ``Last-Event-ID`` (three tries in a row at most)."""
        failures = 0
        while True:
            extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                async with self._http.stream(
                    "GET", f"/api/tasks/{task_id}/events", headers=extra, timeout=None
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        check(response)
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        if event.event == "end":
                            return
                        state = state_of(event)
                        if state is not None:
                            failures = 0
                            last_event_id = event.id or last_event_id
                            yield state
                error: httpx.HTTPError = httpx.RemoteProtocolError("the stream ended early")
            except httpx.HTTPError as exc:
                error = exc
            failures += 1  # dropped, or ended without its end event: resume
            if failures >= 3:
                raise unreachable(self.base_url, error) from None
            await asyncio.sleep(0.2 * failures)

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
            async with self._http.stream("GET", url) as response:
                if not response.is_success:
                    await response.aread()
                    check(response)
                with dest.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        except OSError as exc:
            raise PixelbusError(f"cannot write {dest}: {exc}") from None
        return dest

    async def fetch_task(
        self, *, environment: str = COMFY_ENVIRONMENT, wait: float = 10, consumer: str = "external"
    ) -> LeasedTask | None:
        """Lease a task of ``environment``'s pool, long-polling up to ``wait`` s (keep the
        client's timeout above it); None when none came."""
        params = {"environment": environment, "wait": wait, "consumer": consumer}
        data = await self._request("GET", "/api/comm/task/fetch", params=params)
        return None if data is None else LeasedTask.from_json(data)

    async def report_progress(
        self,
        lease: LeasedTask,
        *,
        fraction: float | None = None,
        node: str | None = None,
        message: str | None = None,
    ) -> float:
        """Progress, which extends the lease: the seconds it now has. ``ApiError`` 409: the
        lease is lost (it expired, or the task was cancelled or completed)."""
        body = {"fraction": fraction, "node": node, "message": message}
        return float((await self._lease_call(lease, "progress", body))["lease_expires_in_s"])

    async def complete_task(
        self, lease: LeasedTask, outputs: Sequence[Output] = (), *, result: Any = None
    ) -> None:
        body = {"outputs": [o.to_json() for o in outputs], "result": result}
        await self._lease_call(lease, "complete", body)

    async def fail_task(
        self,
        lease: LeasedTask,
        message: str,
        *,
        code: str = "consumer_error",
        retryable: bool = False,
    ) -> bool:
        """Whether the failure is final. The message and code are cut to the gateway's
        limits (4000 and 100 characters)."""
        body = {"message": message[:4000], "code": code[:100], "retryable": retryable}
        return bool((await self._lease_call(lease, "fail", body))["final"])

    async def _lease_call(self, lease: LeasedTask, action: str, body: dict[str, Any]) -> Any:
        path = f"/api/comm/task/{lease.task_id}/{action}"
        return await self._request("POST", path, json={"lease_token": lease.token, **body})
