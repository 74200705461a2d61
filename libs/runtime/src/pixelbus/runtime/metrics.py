"""Prometheus metrics of every pixelbus service, served on ``/metrics`` by ``probes``.

One ``Metrics`` object per process: ``process_metrics()`` makes it on first use in the
process-wide default registry (several services may share a process, as in the tests);
tests of the metrics themselves pass their own ``CollectorRegistry`` to ``Metrics``. Every service
creates the same families, so a dashboard can sum them across services; a family a
service never touches simply stays at zero.

Families (name: type [labels] — who moves it):

- ``pixelbus_tasks_created_total``: counter [workflow, environment] — gateway, per task
- ``pixelbus_tasks_completed_total``: counter [workflow] — uploader, per ``TaskCompleted``
- ``pixelbus_tasks_failed_total``: counter [workflow, code, final] — per ``TaskFailed``
- ``pixelbus_task_duration_seconds``: histogram [workflow, step] — worker ``handler``,
  uploader ``upload``, gateway ``end_to_end``
- ``pixelbus_task_queue_wait_seconds``: histogram [workflow] — worker: ``TaskCreated``
  time to the start of an attempt
- ``pixelbus_tasks_in_flight``: gauge [pool] — worker / uploader: tasks in progress
- ``pixelbus_consumer_pending``: gauge [stream, consumer] — ``sample_consumers``: not yet
  delivered (the lag KEDA scales on)
- ``pixelbus_consumer_ack_pending``: gauge [stream, consumer] — delivered, not yet acked
- ``pixelbus_comfyui_backend_up``: gauge [backend] — comfy-worker: 1 healthy, 0 not
- ``pixelbus_upload_bytes_total``: counter [provider] — uploader, bytes written
- ``pixelbus_upload_errors_total``: counter [provider, code] — uploader, failed attempts
- ``pixelbus_nats_requests_total``: counter — every service: NATS exchanges it waited for
  (JetStream publishes, KV and stream API calls, double acks), from ``connection.TRAFFIC``
- ``pixelbus_nats_messages_sent_total``: counter — every service: messages sent to NATS
  (requests included, and acks, pull requests, core publishes)

Label values come from a bounded set (workflow names are sanitised subject tokens, error
codes are ours, ``backend`` is a configured URL without credentials): never a task id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pixelbus.contracts.subjects import POOLS, TASK_STREAM, UPLOADER_CONSUMER
from pixelbus.runtime.connection import TRAFFIC

__all__ = [
    "DURATION_BUCKETS",
    "QUEUE_WAIT_BUCKETS",
    "Metrics",
    "process_metrics",
    "sample_consumers",
]

log = structlog.get_logger("pixelbus.metrics")

#: Seconds: from a probe task (milliseconds) to a long ComfyUI workflow (many minutes).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)
MAX_WORKFLOW_LABELS = 200
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The metric families of one process (see the module docstring for the table)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._workflows: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        reg = self.registry
        self.tasks_created = Counter(
            "pixelbus_tasks_created",
            "Tasks accepted by the gateway and published as TaskCreated",
            ["workflow", "environment"],
            registry=reg,
        )
        self.tasks_completed = Counter(
            "pixelbus_tasks_completed",
            "Tasks completed (TaskCompleted published)",
            ["workflow"],
            registry=reg,
        )
        self.tasks_failed = Counter(
            "pixelbus_tasks_failed",
            "TaskFailed events published, by error code; final=true ends the task",
            ["workflow", "code", "final"],
            registry=reg,
        )
        self.task_duration = Histogram(
            "pixelbus_task_duration_seconds",
            "Time spent in one step of a task (handler, upload, end_to_end)",
            ["workflow", "step"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            "pixelbus_task_queue_wait_seconds",
            "Time from TaskCreated to the start of an attempt on a worker",
            ["workflow"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "pixelbus_tasks_in_flight",
            "Tasks being processed by this process now",
            ["pool"],
            registry=reg,
        )
        self.consumer_pending = Gauge(
            "pixelbus_consumer_pending",
            "Messages of the stream not yet delivered to the durable consumer (its lag)",
            ["stream", "consumer"],
            registry=reg,
        )
        self.consumer_ack_pending = Gauge(
            "pixelbus_consumer_ack_pending",
            "Messages delivered by the durable consumer and not yet acknowledged",
            ["stream", "consumer"],
            registry=reg,
        )
        self.comfyui_backend_up = Gauge(
            "pixelbus_comfyui_backend_up",
            "1 when the ComfyUI backend answered its last health check, else 0",
            ["backend"],
            registry=reg,
        )
        self.upload_bytes = Counter(
            "pixelbus_upload_bytes",
            "Bytes written to external storage",
            ["provider"],
            registry=reg,
        )
        self.upload_errors = Counter(
            "pixelbus_upload_errors",
            "Failed upload attempts, by error code",
            ["provider", "code"],
            registry=reg,
        )
        reg.register(_TrafficCollector())

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: prometheus_client takes a lock and
        rebuilds the label tuple on every call, a measurable cost on the task path."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _workflow(self, name: str) -> str:
        """Workflow names come from clients: past ``MAX_WORKFLOW_LABELS`` distinct ones,
        the rest are counted as ``other`` so that a client cannot explode the series."""
        if name in self._workflows:
            return name
        if len(self._workflows) >= MAX_WORKFLOW_LABELS:
            return "other"
        self._workflows.add(name)
        return name

    # One-line helpers for the call sites, so that label spelling lives here only.

    def task_created(self, workflow: str, environment: str) -> None:
        self._child(self.tasks_created, self._workflow(workflow), environment).inc()

    def task_completed(self, workflow: str) -> None:
        self._child(self.tasks_completed, self._workflow(workflow)).inc()

    def task_failed(self, workflow: str, code: str, *, final: bool) -> None:
        self._child(self.tasks_failed, self._workflow(workflow), code, str(final).lower()).inc()

    def observe_duration(self, workflow: str, step: str, seconds: float) -> None:
        self._child(self.task_duration, self._workflow(workflow), step).observe(max(0.0, seconds))

    def observe_queue_wait(self, workflow: str, seconds: float) -> None:
        self._child(self.queue_wait, self._workflow(workflow)).observe(max(0.0, seconds))

    def set_in_flight(self, pool: str, count: int) -> None:
        self._child(self.in_flight, pool).set(count)

    def set_backend_up(self, backend: str, up: bool) -> None:
        self.comfyui_backend_up.labels(backend=backend).set(1 if up else 0)

    def uploaded(self, provider: str, size: int) -> None:
        self._child(self.upload_bytes, provider).inc(size)

    def upload_failed(self, provider: str, code: str) -> None:
        self._child(self.upload_errors, provider, code).inc()


class _TrafficCollector(Collector):
    """The process's NATS traffic, read from ``TRAFFIC`` at each scrape (nothing per message)."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "pixelbus_nats_requests",
            "NATS exchanges this process waited for (publish acks, API calls, double acks)",
            value=TRAFFIC.requests,
        )
        yield CounterMetricFamily(
            "pixelbus_nats_messages_sent",
            "Messages this process sent to NATS (requests, acks, pull requests, publishes)",
            value=TRAFFIC.sent,
        )


_PROCESS_METRICS: Metrics | None = None


def process_metrics() -> Metrics:
    """The one ``Metrics`` of this process, in the default registry."""
    global _PROCESS_METRICS
    if _PROCESS_METRICS is None:
        _PROCESS_METRICS = Metrics()
    return _PROCESS_METRICS


DEFAULT_CONSUMERS: tuple[tuple[str, str], ...] = (
    *((TASK_STREAM, pool.durable) for pool in POOLS),
    (TASK_STREAM, UPLOADER_CONSUMER),
)


async def sample_consumers(
    js: JetStreamContext,
    metrics: Metrics,
    consumers: Iterable[tuple[str, str]] = DEFAULT_CONSUMERS,
    *,
    timeout_s: float = 2.0,
) -> None:
    """Read each durable consumer's info once and set the lag gauges.

    Call it from a loop every few seconds (one per service is enough; any service may).
    A consumer that cannot be read keeps its last value and is logged; one that does not
    exist (its service is not deployed, or not yet) only at DEBUG, so a stack without the
    webhooks service does not log a warning every few seconds.
    """
    for stream, consumer in consumers:
        try:
            info = await asyncio.wait_for(js.consumer_info(stream, consumer), timeout_s)
        except NotFoundError:
            log.debug("consumer not there", stream=stream, consumer=consumer)
            continue
        except Exception as exc:
            log.warning("consumer info failed", stream=stream, consumer=consumer, error=str(exc))
            continue
        metrics.consumer_pending.labels(stream=stream, consumer=consumer).set(info.num_pending or 0)
        metrics.consumer_ack_pending.labels(stream=stream, consumer=consumer).set(
            info.num_ack_pending or 0
        )
