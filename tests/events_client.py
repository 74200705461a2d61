"""A small Server-Sent Events reader for the tests (over a real HTTP connection)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class SseEvent:
    event: str
    id: int | None
    data: dict[str, Any]


async def sse_events(
    http: httpx.AsyncClient, path: str, last_event_id: int | None = None
) -> AsyncIterator[SseEvent]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield SseEvent(
                        fields.get("event", "message"),
                        int(fields["id"]) if "id" in fields else None,
                        json.loads(fields["data"]),
                    )
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
