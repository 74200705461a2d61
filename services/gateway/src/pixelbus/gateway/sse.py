"""Server-Sent Events framing (pure)."""

from __future__ import annotations

__all__ = ["comment", "message", "parse_last_event_id"]


def message(data: str, *, event: str | None = None, id: int | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def parse_last_event_id(value: str | None) -> int | None:
    """The stream sequence a client saw last, or None (absent or not ours)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
