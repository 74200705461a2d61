"""W3C trace context in NATS headers, so one trace runs from the HTTP request to the upload.

Tracing costs nothing unless it is wanted: spans are made, and ``traceparent`` headers
sent, only once a tracer provider is installed through this module (``setup_tracing``
installs the SDK's when an OTLP exporter is configured, or takes one installed by
``OTEL_PYTHON_TRACER_PROVIDER``; a test passes its own to ``use_tracer_provider``).
``tracing_on()`` is a flag read: check it before building a span on a hot path.
"""

from __future__ import annotations

import os

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import ProxyTracerProvider, TracerProvider

__all__ = [
    "context_from_headers",
    "headers_with_trace",
    "messaging_attributes",
    "setup_tracing",
    "tracer",
    "tracing_on",
    "use_tracer_provider",
]

tracer = trace.get_tracer("pixelbus")


_enabled = False


def tracing_on() -> bool:
    """Whether spans are recorded in this process (a provider was installed here)."""
    return _enabled


def use_tracer_provider(provider: TracerProvider) -> None:
    """Install ``provider`` as the process's tracer provider and turn tracing on."""
    global _enabled
    trace.set_tracer_provider(provider)
    _enabled = True


def headers_with_trace(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``traceparent``/``tracestate`` of the current span (if any)."""
    carrier = dict(headers or {})
    inject(carrier)
    return carrier


def context_from_headers(headers: dict[str, str] | None) -> otel_context.Context:
    return extract(headers or {})


_configured = False


def setup_tracing(service_name: str) -> None:
    """Install the SDK tracer provider once per process when spans have somewhere to go.

    Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, with the exporter reading the other
    standard ``OTEL_EXPORTER_OTLP_*`` settings itself; otherwise tracing stays off (no
    spans, no ``traceparent`` headers: recording spans nobody reads cost every hop).
    """
    global _configured, _enabled
    if _configured:
        return
    _configured = True
    if not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        _enabled = True  # installed by OTEL_PYTHON_TRACER_PROVIDER or the host program
        return
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_tracer_provider(provider)


def messaging_attributes(operation: str, subject: str, message_id: str) -> dict[str, str]:
    """OpenTelemetry messaging attributes of a NATS publish or process span."""
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
    }
