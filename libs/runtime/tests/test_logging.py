"""Log lines: JSON with the trace ids of the current span, secrets masked."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from pixelbus.runtime.logging import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    try:
        yield
    finally:
        structlog.reset_defaults()


def test_a_line_inside_a_span_carries_its_trace_and_masks_secrets(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "json")  # in the test: it binds the stderr that capsys captures
    tracer = TracerProvider().get_tracer("test")
    log = structlog.get_logger("t")
    with tracer.start_as_current_span("step") as span:
        log.info("task processed", task_id="t1", attempt=2, outcome="completed", api_token="abc")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["task_id"] == "t1" and line["attempt"] == 2 and line["outcome"] == "completed"
    assert line["api_token"] == "***"
    log.info("outside any span")
    assert "trace_id" not in json.loads(capsys.readouterr().err.strip().splitlines()[-1])


def test_loggers_follow_stderr_when_it_is_swapped(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test runner swaps stderr per test; a logger cached under an earlier one must not
    write to that closed stream."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO", "json")
    log = structlog.get_logger("swapped")
    log.info("one")  # cached on first use, while stderr is the first stream
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("two")
    assert json.loads(second.getvalue().strip())["event"] == "two"
