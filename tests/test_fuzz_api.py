"""API fuzzing: schemathesis generates requests from the gateway's own OpenAPI document
and sends them to a real gateway (uvicorn on a loopback port, a real nats-server behind
it). Every answer must be no 5xx, a documented status code and content type, and a body
and headers that match the schema declared for that status.

Bounded in time: a few examples per operation and mode, valid and invalid
(``PIXELBUS_FUZZ_EXAMPLES``, default 25),
no shrinking, long polls asked not to wait. schemathesis is synchronous, so it runs in a
thread while the event loop serves the gateway.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pixelbus.testkit.nats_server import NatsServer
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(180)

EXAMPLES = int(os.environ.get("PIXELBUS_FUZZ_EXAMPLES", "25"))
#: Valid requests, and requests that break the schema on purpose (which must get a 4xx).
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Long polls: ask them not to wait, so that each example costs one round trip.
NO_WAIT = {"/api/comm/task/fetch": {"wait": 0}, "/api/face-swap/process": {"wait": 0}}


@dataclass
class Report:
    operations: int = 0
    examples: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    no_invalid_form: list[str] = field(default_factory=list)
    """Operations where every request the schema can describe is valid (no parameters,
    or only unconstrained strings): there is nothing for the negative mode to send."""


@pytest.fixture
async def gateway(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    """The gateway alone with its bus: fuzzed tasks are accepted and stay queued."""
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        yield stack


def fuzz(base_url: str, spec: dict[str, Any]) -> Report:
    schema = schemathesis.openapi.from_dict(spec)
    report = Report()
    session = requests.Session()
    session.trust_env = False
    for result in schema.get_all_operations():
        operation = result.ok()
        report.operations += 1
        for mode in MODES:
            fuzz_operation(operation, mode, base_url, session, report)
    return report


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    base_url: str,
    session: requests.Session,
    report: Report,
) -> None:
    strategy = operation.as_strategy(mode, query=NO_WAIT.get(operation.path))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        report.examples += 1
        response = case.call(base_url=base_url, session=session, timeout=15)
        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
        report.no_invalid_form.append(f"{operation.method.upper()} {operation.path}")
    except (Exception, BaseExceptionGroup) as failure:  # schemathesis groups its findings
        report.failures.append(
            f"{operation.method.upper()} {operation.path} ({mode.value}): {failure}"
        )


async def test_gateway_answers_every_generated_request_as_documented(gateway: Stack) -> None:
    spec_response = await gateway.http.get("/openapi.json")
    assert spec_response.status_code == 200
    spec = spec_response.json()
    started = time.perf_counter()
    report = await asyncio.to_thread(fuzz, gateway.base_url, spec)
    elapsed = time.perf_counter() - started
    print(
        f"\nschemathesis: {report.examples} examples over {report.operations} operations "
        f"in {elapsed:.1f} s; statuses {dict(sorted(report.statuses.items()))}; "
        f"{len(report.failures)} operations failed; no invalid request possible for "
        f"{len(report.no_invalid_form)}: {', '.join(report.no_invalid_form)}"
    )
    for failure in report.failures:
        print(failure)
    assert report.operations == sum(len(ops) for ops in spec["paths"].values())
    assert report.examples >= report.operations
    assert not any(status >= 500 for status in report.statuses), report.statuses
    assert report.failures == []
