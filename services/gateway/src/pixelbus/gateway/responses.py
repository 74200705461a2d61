"""OpenAPI declarations of the gateway's error answers, so that clients and the API
fuzzer (tests/test_fuzz_api.py) can hold every answer to its schema: each is a JSON
object with a ``detail`` message (and sometimes more fields)."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

__all__ = [
    "ERROR_SCHEMA",
    "VALIDATION_SCHEMA",
    "Json",
    "error",
    "json_body",
    "json_request",
    "validation_error",
]

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


def json_request(examples: dict[str, Any], body: type | None = None) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a JSON object body that the route decodes itself
    (once, with msgspec, into its contract type) instead of a FastAPI ``Body`` parameter,
    which would parse every body a second time only to hand over a dict. ``body``: a flat
    msgspec struct whose schema (constraints and descriptions) documents the body."""
    schema: dict[str, Any] = {"type": "object"}
    if body is not None:
        schema = msgspec.json.schema(body)["$defs"][body.__name__]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": schema,
                    "examples": {name: {"value": value} for name, value in examples.items()},
                }
            },
        }
    }


class Json(Response):
    """A JSON answer encoded by msgspec (a few times faster than ``json.dumps``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)
