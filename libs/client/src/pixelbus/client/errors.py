"""Errors of the SDK.

PixelbusError
├── ApiError          the gateway answered an error (``status``, ``detail``)
├── Unreachable       no answer: connection refused, DNS, timeout
└── WaitTimeout       ``wait`` ran out before the task was final
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "PixelbusError", "Unreachable", "WaitTimeout"]


class PixelbusError(Exception):
    pass


class ApiError(PixelbusError):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {describe_detail(detail)}")


class Unreachable(PixelbusError):
    pass


class WaitTimeout(PixelbusError):
    pass


def describe_detail(detail: Any) -> str:
    """A 422's field list as ``field: message; …``, anything else as text."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)
