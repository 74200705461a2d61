"""ComfyUI's HTTP API (httpx). Failures become ``BackendUnavailable`` (retryable) or
``PromptRejected`` (the graph was refused); callers see only our errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from pixelbus.comfy_worker.errors import BackendUnavailable, ComfyError
from pixelbus.comfy_worker.protocol import (
    FileRef,
    HistoryEntry,
    QueuePlace,
    parse_history,
    place_in_queue,
    rejection,
)

__all__ = ["ComfyClient", "Submitted"]


@dataclass(frozen=True, slots=True)
class Submitted:
    prompt_id: str
    number: int
    node_errors: dict[str, Any]


class ComfyClient:
    """One ComfyUI server's HTTP endpoints."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"ComfyUI at {self.base_url} timed out ({path})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code >= 500:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} answered {response.status_code} to {method} {path}"
            )
        return response

    async def submit(self, graph: dict[str, Any], *, client_id: str, prompt_id: str) -> Submitted:
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        response = await self._request("POST", "/prompt", json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            raise rejection(response.status_code, answer, response.text)
        if not isinstance(answer, dict) or not isinstance(answer.get("prompt_id"), str):
            raise BackendUnavailable(f"ComfyUI at {self.base_url}: unexpected /prompt answer")
        node_errors = answer.get("node_errors")
        return Submitted(
            prompt_id=answer["prompt_id"],
            number=int(answer.get("number") or 0),
            node_errors=node_errors if isinstance(node_errors, dict) else {},
        )

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        response = await self._request("GET", f"/history/{prompt_id}")
        return parse_history(self._json(response), prompt_id)

    async def queue_place(self, prompt_id: str) -> QueuePlace | None:
        response = await self._request("GET", "/queue")
        return place_in_queue(self._json(response), prompt_id)

    async def delete_queued(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupts only this prompt (never send an empty body: that stops any prompt)."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def system_stats(self) -> dict[str, Any]:
        response = await self._request("GET", "/system_stats")
        body = self._json(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url}: /system_stats answered {response.status_code}"
            )
        return body

    async def view(self, ref: FileRef, *, max_bytes: int) -> bytes:
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        try:
            async with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code >= 500:
                    raise BackendUnavailable(
                        f"ComfyUI at {self.base_url} answered {response.status_code} to /view"
                    )
                if response.status_code != 200:
                    raise ComfyError(
                        f"output {ref.filename!r} of node {ref.node_id} could not be read "
                        f"(/view answered {response.status_code})",
                        node_id=ref.node_id,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ComfyError(
                            f"output {ref.filename!r} of node {ref.node_id} is larger than "
                            f"{max_bytes} bytes (PIXELBUS_COMFY_MAX_OUTPUT_BYTES)",
                            node_id=ref.node_id,
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url} is unreachable ({type(exc).__name__})"
            ) from exc

    async def upload_image(self, data: bytes, filename: str, *, subfolder: str) -> str:
        """Upload into the input folder; the name to give ``LoadImage`` (always the
        server's answer: a taken name becomes ``name (1).png``)."""
        response = await self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data, "application/octet-stream")},
            data={"type": "input", "subfolder": subfolder, "overwrite": "false"},
        )
        body = self._json(response)
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("name"):
            raise BackendUnavailable(
                f"ComfyUI at {self.base_url}: /upload/image answered {response.status_code}"
            )
        folder = str(body.get("subfolder") or "")
        return f"{folder}/{body['name']}" if folder else str(body["name"])

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None
