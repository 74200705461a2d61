"""The pure parts of ``just bench``: percentiles, Prometheus totals, ratios and goals."""

from __future__ import annotations

import pytest

from tests.bench_loadgen import percentile
from tests.bench_report import format_ratios, metric_total, per_task, ratios

SCRAPE = """# HELP pixelbus_nats_requests_total NATS exchanges
# TYPE pixelbus_nats_requests_total counter
pixelbus_nats_requests_total 12.0
pixelbus_nats_requests_created 1.7e9
pixelbus_nats_messages_sent_total{kind="ack"} 3
pixelbus_nats_messages_sent_total{kind="pub"} 4 1700000000
"""


def test_percentile_is_a_value_that_occurred() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.99) == 5.0
    assert percentile(values, 0.2) == 1.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_metric_totals_sum_labelled_samples_and_skip_lookalikes() -> None:
    assert metric_total(SCRAPE, "pixelbus_nats_requests_total") == 12.0
    assert metric_total(SCRAPE, "pixelbus_nats_messages_sent_total") == 7.0
    assert metric_total(SCRAPE, "pixelbus_nats_requests") is None  # only lookalikes
    later = SCRAPE.replace("12.0", "32.0")
    assert per_task(SCRAPE, later, "pixelbus_nats_requests_total", 10) == 2.0
    assert per_task(None, later, "pixelbus_nats_requests_total", 10) is None


def test_ratios_and_goals() -> None:
    def row(saturated: float, one_p50: float) -> dict[str, object]:
        return {
            "saturation": {"tasks_per_s": saturated},
            "one": {"p50_ms": one_p50, "p99_ms": one_p50 * 2},
            "rate": {"p50_ms": one_p50, "p99_ms": one_p50 * 2},
        }

    results = {"pixelbus": row(1500, 2.0), "celery": row(500, 2.5), "arq": row(2000, 5.0)}
    got = ratios(results)
    assert got["celery"]["saturated"] == pytest.approx(3.0)
    assert got["arq"]["saturated"] == pytest.approx(0.75)
    assert got["celery"]["one_p50"] == pytest.approx(0.8)
    text = format_ratios(results)
    assert "met" in text and "MISSED" in text  # 3x Celery met, 0.75x arq missed


def test_the_report_prints_pixelbus_hops_when_measured() -> None:
    from argparse import Namespace

    from tests.bench import report

    timed = {"ok": 100, "p50_ms": 2.2, "p99_ms": 3.6}
    kv_one = {
        "subject": timed,
        "kv": timed,
        "hops": {"http_to_created": 0.58, "created_to_outputs": 0.65, "outputs_to_completed": 1.5},
    }
    args = Namespace(tasks=10, clients=2, one=5, rate=100.0, seconds=1.0, arq_max_jobs=10)
    text = report({"pixelbus": {"system": "pixelbus", "kv_one": kv_one}}, args)
    assert "POST -> TaskCreated 0.58 ms, -> OutputsReady (worker) 0.65 ms" in text
    assert "-> TaskCompleted (uploader) 1.50 ms" in text
