"""W3C trace context in NATS headers, so one trace runs from the HTTP request to the upload.

Tracing costs nothing unless it is wanted: spans are made, and ``traceparent`` headers
sent, only while an SDK tracer provider is installed (``setup_tracing`` installs one when
an OTLP exporter is configured; a test may install its own). Check ``tracing_on()``
before building a span on a hot path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import ProxyTracerProvider

__all__ = [
    "context_from_headers",
    "headers_with_trace",
    "messaging_attributes",
    "setup_tracing",
    "tracer",
    "tracing_on",
]

tracer = trace.get_tracer("pixelbus")


def tracing_on() -> bool:
    """Whether spans are recorded: an SDK tracer provider is installed in this process."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def headers_with_trace(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``traceparent``/``tracestate`` of the current span (if any)."""
    carrier = dict(headers or {})
    inject(carrier)
    return carrier


def context_from_headers(headers: dict[str, str] | None) -> otel_context.Context:
    return extract(headers or {})


_configured = False


def setup_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> None:
    """Install the SDK tracer provider once per process when spans have somewhere to go.

    Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, with the exporter reading the other
    standard ``OTEL_EXPORTER_OTLP_*`` settings itself; otherwise tracing stays off (no
    spans, no ``traceparent`` headers: recording spans nobody reads cost every hop).
    """
    global _configured
    environ = os.environ if environ is None else environ
    exporting = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if _configured or not exporting or tracing_on():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def messaging_attributes(operation: str, subject: str, message_id: str) -> dict[str, str]:
    """OpenTelemetry messaging attributes of a NATS publish or process span."""
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
    }
