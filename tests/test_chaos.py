"""The short variant of ``just chaos`` (``tests/chaos.py``): the real stack as processes,
a steady load of probe tasks and face swaps, and a ``kill -9`` every 0.8 to 1.6 s of every
role in turn, nats-server included. Nothing may be lost or doubled. The bound on the
slowest task is loose here (a restart every 1.2 s takes most of two cores, and a busy CI
machine stretches it further: 4.4 s alone, 29 s in a full run on a shared machine); the recovery
figure is the long run's. The long run is ``./dev chaos --duration 600``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos import NATS_ROLE, ROLES, arguments, chaos

pytestmark = pytest.mark.e2e


def test_a_short_chaos_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    args = arguments(
        ["--duration", "30", "--rate", "8", "--swap-rate", "0.4", "--kill-every", "0.8-1.6",
         "--nats-every", "8", "--seed", "14", "--max-final-s", "60"]
    )  # fmt: skip
    report = asyncio.run(chaos(args, tmp_path))
    for name, value in report.figures.items():
        print(f"figure: {name}: {value}")
    assert report.failures == []
    kills = report.figures["kills"]
    assert all(kills.get(role, 0) >= 2 for role in ROLES), kills
    assert kills.get(NATS_ROLE, 0) >= 1, kills
    assert report.figures["tasks created"] >= 150
    assert report.figures["face swaps"] >= 8
