"""Completion subscriptions: the example service receives every completion exactly once
across a restart; a failing callback gets the completion again; filters narrow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from nats.aio.client import Client

from pixelbus.completions import Completion, CompletionSubscriber, completion_subject
from pixelbus.contracts.events import TaskCompleted, TaskFailed, event_id
from pixelbus.contracts.task import StoredOutput
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.settings import BusSettings
from pixelbus.testkit.nats_server import NatsServer

EXAMPLE = Path(__file__).parents[1] / "libs" / "completions" / "examples" / "record_completions.py"


async def complete(nc: Client, task_id: str, environment: str = "face_swap") -> None:
    output = StoredOutput(
        filename="result.png",
        content_type="image/png",
        size=3,
        url=f"https://cdn.example.com/{task_id}/result.png",
        key=f"tasks/{task_id}/result.png",
        provider="local",
    )
    event = TaskCompleted(
        event_id=event_id(task_id, "completed"),
        task_id=task_id,
        occurred_at=utcnow(),
        outputs=(output,),
    )
    workflow = "face_swap" if environment == "face_swap" else "txt2img"
    await EventPublisher(nc.jetstream()).publish(event, environment=environment, workflow=workflow)


async def read_lines(stream: asyncio.StreamReader, count: int, timeout: float = 20) -> list[dict]:
    lines = []
    async with asyncio.timeout(timeout):
        while len(lines) < count:
            line = await stream.readline()
            assert line, "the example service exited early"
            lines.append(json.loads(line))
    return lines


async def start_example(nats_url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        env={**os.environ, "NATS_URL": nats_url, "SERVICE_NAME": "recorder"},
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def test_example_service_gets_every_completion_exactly_once_across_a_restart(
    nats_server: NatsServer, nc: Client
) -> None:
    await ensure(nc.jetstream(), BusSettings())
    first_batch = [f"task_a{i}" for i in range(5)]
    second_batch = [f"task_b{i}" for i in range(5)]
    service = await start_example(nats_server.url)
    try:
        for task_id in first_batch:
            await complete(nc, task_id)
        await complete(nc, "task_comfy", environment="comm")  # not its environment
        assert service.stdout is not None
        seen = await read_lines(service.stdout, 5)
        service.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(service.wait(), 20) == 0
        # Completions while the service is down wait for it in its durable consumer.
        for task_id in second_batch:
            await complete(nc, task_id)
        service = await start_example(nats_server.url)
        assert service.stdout is not None
        seen += await read_lines(service.stdout, 5)
        # One more, live, proves nothing else was queued before it.
        await complete(nc, "task_c0")
        seen += await read_lines(service.stdout, 1)
    finally:
        if service.returncode is None:
            service.send_signal(signal.SIGTERM)
            await asyncio.wait_for(service.wait(), 20)
    ids = [line["task_id"] for line in seen]
    assert ids == [*first_batch, *second_batch, "task_c0"]  # each once, none of comm
    assert seen[0]["urls"] == ["https://cdn.example.com/task_a0/result.png"]


async def test_a_failing_callback_gets_the_completion_again(nc: Client) -> None:
    await ensure(nc.jetstream(), BusSettings())
    calls: list[Completion] = []
    done = asyncio.Event()

    async def flaky(completion: Completion) -> None:
        calls.append(completion)
        if len(calls) == 1:
            raise RuntimeError("downstream database is down")
        done.set()

    subscriber = CompletionSubscriber(nc, "flaky", flaky, retry_delay_s=0.1)
    runner = asyncio.create_task(subscriber.run())
    await complete(nc, "task_x")
    await asyncio.wait_for(done.wait(), 10)
    subscriber.stop()
    await asyncio.wait_for(runner, 10)
    assert [(c.task_id, c.delivery) for c in calls] == [("task_x", 1), ("task_x", 2)]
    assert calls[1].status == "COMPLETED" and calls[1].outputs[0].filename == "result.png"
    assert subscriber.handled == 1


async def test_failures_are_delivered_only_when_asked(nc: Client) -> None:
    await ensure(nc.jetstream(), BusSettings())
    got: list[Completion] = []
    both = asyncio.Event()

    async def keep(completion: Completion) -> None:
        got.append(completion)
        if len(got) == 2:
            both.set()

    subscriber = CompletionSubscriber(nc, "all", keep, include_failed=True)
    runner = asyncio.create_task(subscriber.run())
    publisher = EventPublisher(nc.jetstream())
    retry = TaskFailed(
        event_id=event_id("task_f", "failed", 1),
        task_id="task_f",
        occurred_at=utcnow(),
        code="boom",
        message="try again",
        retryable=True,
        final=False,
    )
    final = TaskFailed(
        event_id=event_id("task_f", "failed", 2, final=True),
        task_id="task_f",
        occurred_at=utcnow(),
        code="boom",
        message="gave up",
        retryable=False,
        final=True,
    )
    await publisher.publish(retry, environment="comm", workflow="txt2img")
    await publisher.publish(final, environment="comm", workflow="txt2img")
    await complete(nc, "task_ok")
    await asyncio.wait_for(both.wait(), 10)
    subscriber.stop()
    await asyncio.wait_for(runner, 10)
    assert sorted((c.task_id, c.status) for c in got) == [
        ("task_f", "FAILED"),
        ("task_ok", "COMPLETED"),
    ]
    failed = next(c for c in got if c.status == "FAILED")
    assert (failed.error_code, failed.workflow) == ("boom", "txt2img")
    assert completion_subject("completed", "comm") == "pixelbus.tasks.comm.*.completed.*"
