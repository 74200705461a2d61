"""``Client``: the pixelbus API, blocking (httpx.Client); the same methods as
``AsyncClient``, sending the same calls (``pixelbus.client.calls``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pixelbus.client import calls
from pixelbus.client.calls import Call, check, unreachable
from pixelbus.client.errors import PixelbusError, WaitTimeout
from pixelbus.client.task import LeasedTask, Output, Task, face_swap_body, workflow_body

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=calls.headers(api_key),
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,  # proxies and CA bundle from the environment (httpx's)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        return call.answer(response)

    @contextlib.contextmanager
    def _stream(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> Iterator[httpx.Response]:
        with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                check(response)
            yield response

    def create(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Task:
        return self._send(calls.create(body, idempotency_key))

    def face_swap(self, source: str, target: str, **options: Any) -> Task:
        return self.create(face_swap_body(source, target, **options))

    def comfy(self, graph: dict[str, Any], **options: Any) -> Task:
        return self.create(workflow_body(graph, **options))

    def get(self, task_id: str) -> Task:
        return self._send(calls.get(task_id))

    def list(
        self, *, limit: int = 20, before: str | None = None, status: str | None = None
    ) -> tuple[list[Task], str | None]:
        return self._send(calls.list_tasks(limit, before, status))

    def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return self._send(calls.cancel(task_id, reason))

    def webhooks(self, task_id: str) -> dict[str, Any]:
        return self._send(calls.webhooks(task_id))

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Task]:
        """Every state of the task until it is final, resuming a dropped connection."""
        follow = calls.Follow(task_id, last_event_id)
        while True:
            error: httpx.HTTPError | None = None
            try:
                with self._stream(follow.path, follow.headers(), timeout=None) as response:
                    for line in response.iter_lines():
                        state = follow.feed(line)
                        if follow.ended:
                            return
                        if state is not None:
                            yield state
            except httpx.HTTPError as exc:
                error = exc
            time.sleep(follow.retry_in(self.base_url, error))

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
            with self._stream(url) as response, dest.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        except httpx.HTTPError as exc:
            raise unreachable(self.base_url, exc) from None
        except OSError as exc:
            raise PixelbusError(f"cannot write {dest}: {exc}") from None
        return dest

    def fetch_task(
        self, *, environment: str = "comm", wait: float = 10, consumer: str = "external"
    ) -> LeasedTask | None:
        return self._send(calls.fetch_task(environment, wait, consumer))

    def report_progress(
        self,
        lease: LeasedTask,
        *,
        fraction: float | None = None,
        node: str | None = None,
        message: str | None = None,
    ) -> float:
        return self._send(calls.report_progress(lease, fraction, node, message))

    def complete_task(
        self,
        lease: LeasedTask,
        outputs: Sequence[Output] = (),
        *,
        result: dict[str, Any] | None = None,
    ) -> None:
        self._send(calls.complete_task(lease, outputs, result))

    def fail_task(
        self,
        lease: LeasedTask,
        message: str,
        *,
        code: str = "consumer_error",
        retryable: bool = False,
    ) -> bool:
        return self._send(calls.fail_task(lease, message, code, retryable))
