"""One task is one trace: HTTP request → TaskCreated → worker → OutputsReady → uploader."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pixelbus.runtime.tracing import tracing_on, use_tracer_provider
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack


def _span(spans: list[ReadableSpan], name: str, task_id: str) -> ReadableSpan:
    (found,) = [
        s
        for s in spans
        if s.name == name and (s.attributes or {}).get("pixelbus.task_id") == task_id
    ]
    return found


def _ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


async def test_one_task_is_one_trace_across_every_service(stack: Stack) -> None:
    # Tracing is off until an SDK provider is installed (as an exporter setting does).
    if not tracing_on():
        use_tracer_provider(TracerProvider())
    assert tracing_on()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        body = {"workflow": "probe", "environment": "face_swap"}
        task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
        await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final)

        async def upload_span_done() -> list[ReadableSpan] | None:
            spans = list(exporter.get_finished_spans())
            names = {
                s.name for s in spans if (s.attributes or {}).get("pixelbus.task_id") == task_id
            }
            return spans if {"upload outputs", "publish TaskCompleted"} <= names else None

        spans = await eventually(upload_span_done)
    finally:
        exporter.shutdown()
    by_id = {s.context.span_id: s for s in spans}
    created = _span(spans, "publish TaskCreated", task_id)
    process = _span(spans, "process probe", task_id)
    started = _span(spans, "publish TaskStarted", task_id)
    outputs = _span(spans, "publish OutputsReady", task_id)
    upload = _span(spans, "upload outputs", task_id)
    completed = _span(spans, "publish TaskCompleted", task_id)
    (server,) = [s for s in _ancestry(created, by_id) if s.kind is SpanKind.SERVER]
    assert (server.attributes or {}).get("http.request.method") == "POST"

    trace_id = server.context.trace_id
    assert {
        s.context.trace_id for s in (created, process, started, outputs, upload, completed)
    } == {trace_id}
    # The parent links follow the messages: each consumer span is a child of the
    # producer span whose headers it read.
    assert process.parent is not None and process.parent.span_id == created.context.span_id
    assert process in _ancestry(started, by_id) and process in _ancestry(outputs, by_id)
    assert upload.parent is not None and upload.parent.span_id == outputs.context.span_id
    assert upload in _ancestry(completed, by_id)
    assert created.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert upload.kind is SpanKind.CONSUMER
    assert (process.attributes or {})["messaging.operation.type"] == "process"
    attributes = created.attributes or {}
    assert attributes["messaging.system"] == "nats"
    assert attributes["messaging.destination.name"] == (
        f"pixelbus.tasks.face_swap.probe.created.{task_id}"
    )
