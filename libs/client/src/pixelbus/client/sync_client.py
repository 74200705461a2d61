"""``Client``: the pixelbus API, blocking (httpx.Client); the same methods as
``AsyncClient``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from pixelbus.client.errors import PixelbusError, WaitTimeout
from pixelbus.client.http import check, headers, state_of, unreachable
from pixelbus.client.sse import SseParser
from pixelbus.client.task import Task, face_swap_body, workflow_body

__all__ = ["Client"]


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        return check(response)

    def create(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Task:
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Task.from_json(self._request("POST", "/api/tasks/create", json=body, headers=extra))

    def face_swap(self, source: str, target: str, **options: Any) -> Task:
        return self.create(face_swap_body(source, target, **options))

    def comfy(self, graph: dict[str, Any], **options: Any) -> Task:
        return self.create(workflow_body(graph, **options))

    def get(self, task_id: str) -> Task:
        return Task.from_json(self._request("GET", f"/api/tasks/{task_id}"))

    def list(
        self, *, limit: int = 20, before: str | None = None, status: str | None = None
    ) -> tuple[list[Task], str | None]:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("before", before), ("status", status)) if v})
        page = self._request("GET", "/api/tasks", params=params)
        return [Task.from_json(t) for t in page["tasks"]], page["next"]

    def cancel(self, task_id: str, reason: str | None = None) -> Task:
        params = {"reason": reason} if reason else {}
        return Task.from_json(self._request("POST", f"/api/tasks/{task_id}/cancel", params=params))

    def webhooks(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/tasks/{task_id}/webhooks")
        return result

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Task]:
        """Every state of the task until it is final, resuming a dropped connection."""
        failures = 0
        while True:
            extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self._http.stream(
                    "GET", f"/api/tasks/{task_id}/events", headers=extra, timeout=None
                ) as response:
                    if not response.is_success:
                        response.read()
                        check(response)
                    parser = SseParser()
                    for line in response.iter_lines():
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
            time.sleep(0.2 * failures)

    def wait(
        self,
        task_id: str,
        *,
        on_progress: Callable[[Task], None] | None = None,
        timeout: float | None = None,
    ) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        for task in self.events(task_id):
            if on_progress is not None:
                on_progress(task)
            if task.is_final:
                return task
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"task {task_id} was not final after {timeout} s")
        return self.get(task_id)

    def download(self, url: str, dest: Path) -> Path:
        try:
            with self._http.stream("GET", url) as response:
                if not response.is_success:
                    response.read()
                    check(response)
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        except OSError as exc:
            raise PixelbusError(f"cannot write {dest}: {exc}") from None
        return dest
