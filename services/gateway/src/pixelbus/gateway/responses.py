"""OpenAPI declarations of the gateway's error answers, so that clients and the API
fuzzer (tests/test_fuzz_api.py) can hold every answer to its schema: each is a JSON
object with a ``detail`` message (and sometimes more fields)."""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_SCHEMA", "VALIDATION_SCHEMA", "error", "json_body", "validation_error"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}

#: A 422: ``detail`` lists each refused field (``loc``, ``msg``, ``type``).
VALIDATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}


def json_body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """One entry of a route's ``responses``: ``description`` with a JSON body."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_body(description, ERROR_SCHEMA)


def validation_error(description: str) -> dict[str, Any]:
    return json_body(description, VALIDATION_SCHEMA)
