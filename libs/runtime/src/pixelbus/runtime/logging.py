"""structlog configured for one line per unit of work.

JSON lines when stderr is not a terminal (containers, CI, log shippers), coloured
key=value lines on a terminal (``./dev up``); ``PIXELBUS_LOG_FORMAT=json|console`` decides
otherwise. Every line made inside a span carries its ``trace_id`` and ``span_id``, so a
task's log lines and its trace find each other. Values of keys that name a secret are
masked, whatever logs them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace

__all__ = ["setup_logging"]

_SECRET_KEY = re.compile(r"(secret|password|token|api_key|apikey|credential)", re.IGNORECASE)


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if _SECRET_KEY.search(key) and value not in (None, "", "***"):
            event[key] = "***"
    return event


class _CurrentStderr:
    """``sys.stderr`` as it is at each write, not as it was at setup: loggers are cached
    on first use, and whoever swaps the stream later (a test runner capturing output) must
    not leave them writing to a closed one."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", log_format: str | None = None) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids,
            mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
