"""ComfyUI's HTTP API (aiohttp). Failures become ``BackendUnavailable`` (retryable) or
``PromptRejected`` (the graph was refused); callers see only our errors.

One session per server keeps its connections alive between requests. aiohttp rather than
httpx: on this path every request counts, and httpx spent ~2-3 ms of CPU per request
(httpcore even retries ``import sniffio`` on every pool lock when sniffio is absent)
against ~0.4 ms for aiohttp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from pixelbus.comfy_worker.errors import BackendUnavailable, ComfyError
from pixelbus.comfy_worker.protocol import (
    FileRef,
    HistoryEntry,
    QueuePlace,
    parse_history,
    place_in_queue,
    rejection,
)

__all__ = ["ComfyClient"]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class ComfyClient:
    """One ComfyUI server's HTTP endpoints, over one session (keep-alive connections)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        #: like httpx's single timeout: per connect and per read, not for the whole body
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use: a session belongs to the running event loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
                trust_env=False,
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _request(self, method: str, path: str, **kwargs: Any) -> _Answer:
        try:
            async with self.session.request(method, self._url(path), **kwargs) as response:
                answer = _Answer(response.status, await response.read())
        except TimeoutError as exc:
            raise BackendUnavailable(f"ComfyUI at {self.base_url} timed out ({path})") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if answer.status >= 500:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} answered {answer.status} to {method} {path}"
            )
        return answer

    async def submit(
        self, graph: dict[str, Any], *, client_id: str, prompt_id: str
    ) -> dict[str, Any]:
        """Queue ``graph``; the answer's ``node_errors`` (empty: every output is valid)."""
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        answer = await self._request("POST", "/prompt", json=body)
        parsed = answer.json()
        if answer.status != 200:
            raise rejection(answer.status, parsed, answer.text)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("prompt_id"), str):
            raise BackendUnavailable(f"ComfyUI at {self.base_url}: unexpected /prompt answer")
        node_errors = parsed.get("node_errors")
        return node_errors if isinstance(node_errors, dict) else {}

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        answer = await self._request("GET", f"/history/{prompt_id}")
        return parse_history(answer.json(), prompt_id)

    async def queue_place(self, prompt_id: str) -> QueuePlace | None:
        answer = await self._request("GET", "/queue")
        return place_in_queue(answer.json(), prompt_id)

    async def delete_queued(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupts only this prompt (never send an empty body: that stops any prompt)."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def system_stats(self) -> dict[str, Any]:
        answer = await self._request("GET", "/system_stats")
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url}: /system_stats answered {answer.status}"
            )
        return body

    async def view(self, ref: FileRef, *, max_bytes: int) -> bytes:
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        try:
            async with self.session.get(self._url("/view"), params=params) as response:
                if response.status >= 500:
                    raise BackendUnavailable(
                        f"ComfyUI at {self.base_url} answered {response.status} to /view"
                    )
                if response.status != 200:
                    raise ComfyError(
                        f"output {ref.filename!r} of node {ref.node_id} could not be read "
                        f"(/view answered {response.status})",
                        node_id=ref.node_id,
                    )
                if (response.content_length or 0) > max_bytes:
                    raise _too_large(ref, max_bytes)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(ref, max_bytes)
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError as exc:
            raise BackendUnavailable(f"ComfyUI at {self.base_url} timed out (/view)") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} is unreachable ({type(exc).__name__})"
            ) from exc

    async def upload_image(self, data: bytes, filename: str, *, subfolder: str) -> str:
        """Upload into the input folder; the name to give ``LoadImage`` (always the
        server's answer: a taken name becomes ``name (1).png``)."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "false")
        answer = await self._request("POST", "/upload/image", data=form)
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict) or not body.get("name"):
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url}: /upload/image answered {answer.status}"
            )
        folder = str(body.get("subfolder") or "")
        return f"{folder}/{body['name']}" if folder else str(body["name"])


def _too_large(ref: FileRef, max_bytes: int) -> ComfyError:
    return ComfyError(
        f"output {ref.filename!r} of node {ref.node_id} is larger than "
        f"{max_bytes} bytes (PIXELBUS_COMFY_MAX_OUTPUT_BYTES)",
        node_id=ref.node_id,
    )
