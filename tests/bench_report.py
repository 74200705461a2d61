"""What ``just bench`` prints: the table, the ratios against the goals, NATS work per task.

Pure functions over the load generator's results (``tests/bench_loadgen.py``) and the
Prometheus text of each service's ``/metrics``; no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "GOALS",
    "LABELS",
    "NATS_MESSAGES",
    "NATS_REQUESTS",
    "figures",
    "format_nats",
    "format_ratios",
    "format_table",
    "metric_total",
    "per_task",
    "ratios",
]

LABELS = {
    "pixelbus": "pixelbus",
    "celery": "Celery+Redis",
    "arq": "arq tuned",
    "jetstream": "bare JetStream",
}
#: The figures of a row, in table order: (key, phase, field).
FIGURES = (
    ("saturated", "saturation", "tasks_per_s"),
    ("one_p50", "one", "p50_ms"),
    ("one_p99", "one", "p99_ms"),
    ("rate_p50", "rate", "p50_ms"),
    ("rate_p99", "rate", "p99_ms"),
)
#: The team's goals for pixelbus / peer: figure -> (comparison, bound).
GOALS: dict[str, dict[str, tuple[str, float]]] = {
    "celery": {
        "saturated": (">=", 2.5),
        "one_p50": ("<=", 1.0),
        "rate_p50": ("<=", 1.0),
        "rate_p99": ("<=", 2.0),
    },
    "arq": {"saturated": (">=", 1.0)},
}
NATS_REQUESTS = "pixelbus_nats_requests_total"
NATS_MESSAGES = "pixelbus_nats_messages_sent_total"


def metric_total(text: str, name: str) -> float | None:
    """The sum of every sample of metric ``name`` in Prometheus text; ``None`` if absent.

    A sample line is ``name value`` or ``name{labels} value`` (an optional timestamp may
    follow); comments, other metrics and names that merely start with ``name`` are skipped.
    """
    total: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            close = rest.rfind("}")
            if close < 0:
                continue
            rest = rest[close + 1 :]
        elif not rest[:1].isspace():
            continue  # another metric whose name begins with this one
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        total = value if total is None else total + value
    return total


def per_task(before: str | None, after: str | None, name: str, tasks: int) -> float | None:
    """How much metric ``name`` grew per task between two scrapes; ``None`` if unknown."""
    if before is None or after is None or tasks <= 0:
        return None
    first, last = metric_total(before, name), metric_total(after, name)
    if last is None:
        return None
    return (last - (first or 0.0)) / tasks


def figures(result: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The row of one system: saturated tasks/s and the latency percentiles in ms."""
    out: dict[str, float | None] = {}
    for key, phase, field in FIGURES:
        value = ((result or {}).get(phase) or {}).get(field)
        out[key] = float(value) if isinstance(value, int | float) else None
    return out


def ratios(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """pixelbus / peer for each figure, for each peer that was measured with pixelbus."""
    if "pixelbus" not in results:
        return {}
    ours = figures(results["pixelbus"])
    out: dict[str, dict[str, float | None]] = {}
    for peer in ("celery", "arq", "jetstream"):
        if peer not in results:
            continue
        theirs = figures(results[peer])
        out[peer] = {
            key: (ours[key] / theirs[key]) if ours[key] is not None and theirs[key] else None
            for key, _, _ in FIGURES
        }
    return out


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(
    results: Mapping[str, Mapping[str, Any]], notes: Mapping[str, str] | None = None
) -> str:
    """One row per system: saturated tasks/s, one-in-flight p50/p99, at-rate p50/p99."""
    rate = next(
        (r["rate"].get("rate") for r in results.values() if (r.get("rate") or {}).get("rate")),
        None,
    )
    at = f"at {rate:g}/s" if rate else "at rate"
    lines = [
        f"{'system':<16} {'saturated':>10}   {'one in flight (ms)':>18}   {at + ' (ms)':>18}",
        f"{'':<16} {'tasks/s':>10}   {'p50':>8} {'p99':>9}   {'p50':>8} {'p99':>9}",
    ]
    for system, result in results.items():
        label = LABELS.get(system, system)
        if result.get("error"):
            lines.append(f"{label:<16} failed: {result['error']}")
            continue
        row = figures(result)
        lines.append(
            f"{label:<16} {_num(row['saturated'], ',.0f'):>10}   "
            f"{_num(row['one_p50'], '.2f'):>8} {_num(row['one_p99'], '.2f'):>9}   "
            f"{_num(row['rate_p50'], '.2f'):>8} {_num(row['rate_p99'], '.2f'):>9}"
        )
        if notes and system in notes:
            lines.append(f"{'':<16}   {notes[system]}")
    return "\n".join(lines)


def _goal(peer: str, key: str, ratio: float | None) -> str:
    goal = GOALS.get(peer, {}).get(key)
    if goal is None:
        return ""
    op, bound = goal
    sign = "≥" if op == ">=" else "≤"
    if ratio is None:
        return f"{sign}{bound:g} ?"
    met = ratio >= bound if op == ">=" else ratio <= bound
    return f"{sign}{bound:g} {'met' if met else 'MISSED'}"


def format_ratios(results: Mapping[str, Mapping[str, Any]]) -> str:
    """pixelbus / peer per figure (throughput: higher is better; latency: lower is better),
    with the team's goal under each figure that has one."""
    table = ratios(results)
    if not table:
        return "ratios: pixelbus was not measured"
    lines = [
        f"{'pixelbus / …':<16} {'saturated':>10}   {'one p50':>8} {'one p99':>9}   "
        f"{'rate p50':>8} {'rate p99':>9}"
    ]
    for peer, row in table.items():
        cells = [
            _num(row[key], ".2f") + ("x" if row[key] is not None else "") for key, *_ in FIGURES
        ]
        lines.append(
            f"{LABELS.get(peer, peer):<16} {cells[0]:>10}   {cells[1]:>8} {cells[2]:>9}   "
            f"{cells[3]:>8} {cells[4]:>9}"
        )
        if peer in GOALS:
            goals = [_goal(peer, key, row[key]) for key, *_ in FIGURES]
            lines.append(
                f"{'  goal':<16} {goals[0]:>10}   {goals[1]:>8} {goals[2]:>9}   "
                f"{goals[3]:>8} {goals[4]:>9}"
            )
    return "\n".join(lines)


def format_nats(per_service: Mapping[str, Mapping[str, float | None]], tasks: int) -> str:
    """Requests and messages per task, per service and in total ("n/a" where unknown)."""
    lines = [
        f"NATS per probe task ({tasks} sequential tasks; each service's /metrics before and after)",
        f"{'service':<22} {'requests/task':>14} {'messages/task':>14}",
    ]
    totals: dict[str, list[float]] = {"requests": [], "messages": []}
    for service, row in per_service.items():
        for kind in totals:
            if row.get(kind) is not None:
                totals[kind].append(float(row[kind]))  # type: ignore[arg-type]
        lines.append(
            f"{service:<22} {_num(row.get('requests'), '.2f'):>14} "
            f"{_num(row.get('messages'), '.2f'):>14}"
        )
    cells = []
    partial = False
    for kind, values in totals.items():
        if not values:
            cells.append("n/a")
            continue
        missing = len(values) < len(per_service)
        partial |= missing
        cells.append(f"{sum(values):.2f}" + ("*" if missing else ""))
    lines.append(f"{'total':<22} {cells[0]:>14} {cells[1]:>14}")
    if partial:
        lines.append("  * of the services that expose the metric")
    return "\n".join(lines)
