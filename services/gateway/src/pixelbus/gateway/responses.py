"""OpenAPI declarations of the gateway's error answers, so that clients and the API
fuzzer (tests/test_fuzz_api.py) can hold every answer to its schema: each is a JSON
object with a ``detail`` message (and sometimes more fields)."""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_SCHEMA", "error"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}


def error(description: str) -> dict[str, Any]:
    """One entry of a route's ``responses``: ``description`` with the error body."""
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
