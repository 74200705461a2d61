"""W3C trace context in NATS headers, so one trace runs from the HTTP request to the upload."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

__all__ = ["context_from_headers", "headers_with_trace", "setup_tracing", "tracer"]

tracer = trace.get_tracer("pixelbus")


def headers_with_trace(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``traceparent``/``tracestate`` of the current span (if any)."""
    carrier = dict(headers or {})
    inject(carrier)
    return carrier


def context_from_headers(headers: dict[str, str] | None) -> otel_context.Context:
    return extract(headers or {})


_configured = False


def setup_tracing(service_name: str) -> None:
    """Install the SDK tracer provider once per process, so spans get real trace ids.

    Exporting is configured by the standard ``OTEL_*`` variables where an exporter is
    installed; without one, spans are recorded (ids propagate) but not exported.
    """
    global _configured
    if _configured:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(
        TracerProvider(resource=Resource.create({"service.name": service_name}))
    )
    _configured = True
