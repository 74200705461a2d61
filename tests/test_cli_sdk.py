"""The Python SDK (``pixelbus.client``) that the CLI and the dashboard's tests build on:
async wait with a progress callback, event streams resumed after a forced disconnect,
the recent-tasks list (paged, per tenant), and its errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from pixelbus.client import ApiError, AsyncClient, Client, Task, Unreachable, WaitTimeout
from pixelbus.client.sse import SseParser
from pixelbus.testkit.nats_server import NatsServer
from tests.stack import Stack, running_stack, start_worker

pytestmark = pytest.mark.e2e

PROBE = {"workflow": "probe", "environment": "face_swap"}


async def test_async_wait_calls_back_with_every_state_on_the_way(
    stack: Stack, astronaut: Path, grace_hopper: Path
) -> None:
    seen: list[Task] = []
    async with AsyncClient(stack.base_url) as pb:
        task = await pb.face_swap(str(astronaut), str(grace_hopper), resolution="128x150")
        assert task.status == "PENDING"
        done = await pb.wait(task.task_id, on_progress=seen.append, timeout=60)
    assert done.status == "COMPLETED" and done.output_urls
    assert seen[-1].status == "COMPLETED"
    assert done.output_urls[0].endswith("/result.png")


async def test_events_resume_after_the_connection_drops(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A transport that cuts the first event stream after one state: the SDK reconnects
    with Last-Event-ID and the caller sees each later state once."""

    class CutFirstStream(httpx.AsyncHTTPTransport):
        streams = 0
        resumed_from: list[str | None] = []
        delivered_ids: list[str] = []  # the SSE ids the first stream passed on before its cut

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if not request.url.path.endswith("/events"):
                return response
            type(self).streams += 1
            type(self).resumed_from.append(request.headers.get("last-event-id"))
            if type(self).streams > 1:
                return response
            inner = response.stream

            class OneStateThenCut(httpx.AsyncByteStream):
                async def __aiter__(self):  # type: ignore[override]
                    buffer = b""
                    async for chunk in inner:  # type: ignore[union-attr]
                        buffer += chunk
                        if b"event: state" in buffer and buffer.endswith(b"\n\n"):
                            CutFirstStream.delivered_ids.extend(
                                line[len("id:") :].strip()
                                for line in buffer.decode().splitlines()
                                if line.startswith("id:")
                            )
                            yield buffer
                            raise httpx.ReadError("connection reset by the test")
                    yield buffer

                async def aclose(self) -> None:
                    await inner.aclose()  # type: ignore[union-attr]

            return httpx.Response(
                response.status_code, headers=response.headers, stream=OneStateThenCut()
            )

    async with (
        running_stack(nats_server.url, tmp_path, worker=False) as stack,
        AsyncClient(stack.base_url, transport=CutFirstStream()) as pb,
    ):
        task = await pb.create(PROBE)
        states: list[Task] = []

        async def follow() -> None:
            async for state in pb.events(task.task_id):
                states.append(state)
                if len(states) == 1:
                    worker = await start_worker(stack.env, stack.nc)
                    stack.tasks.append(asyncio.create_task(worker.run()))
                    stack.stoppers.append(worker.stop)

        await asyncio.wait_for(follow(), 30)
    assert CutFirstStream.streams >= 2
    assert CutFirstStream.resumed_from[0] is None
    # resumed from the last event it was given, not started over
    assert CutFirstStream.delivered_ids
    assert CutFirstStream.resumed_from[1] == CutFirstStream.delivered_ids[-1]
    assert states[0].status == "PENDING" and states[-1].status == "COMPLETED"
    assert [s.status for s in states].count("COMPLETED") == 1


async def test_list_pages_newest_first_and_filters(stack: Stack) -> None:
    async with AsyncClient(stack.base_url) as pb:
        ids = [(await pb.create(PROBE)).task_id for _ in range(5)]
        # the list is read from the projected state (the projector folds events into it
        # shortly after they happen; GET by id answers from the stream until then)
        for task_id in ids:
            await pb.wait(task_id, timeout=30)
        first, cursor = await pb.list(limit=3)
        assert cursor is not None
        second, last_cursor = await pb.list(limit=3, before=cursor)
        assert last_cursor is None
        listed = [t.task_id for t in first + second]
        assert sorted(listed) == sorted(ids) and len(set(listed)) == 5
        created = [t.created_at for t in first + second]
        assert created == sorted(created, reverse=True)
        done, _ = await pb.list(status="COMPLETED", limit=50)
        assert ids[-1] in [t.task_id for t in done]
        assert all(t.status == "COMPLETED" for t in done)


def sync_errors(base_url: str) -> tuple[ApiError, ApiError]:
    """The blocking client, run in a thread (the gateway shares the test's loop)."""
    with Client(base_url) as pb:
        with pytest.raises(ApiError) as refused:
            pb.create({"workflow": "face_swap", "environment": "face_swap"})
        with pytest.raises(ApiError) as missing:
            pb.get("task_missing")
    with (
        Client("http://127.0.0.1:9") as offline,
        pytest.raises(Unreachable, match=r"127\.0\.0\.1:9"),
    ):
        offline.get("x")
    return refused.value, missing.value


async def test_errors_are_typed(stack: Stack) -> None:
    refused, missing = await asyncio.to_thread(sync_errors, stack.base_url)
    assert refused.status == 422 and "wf_json" in str(refused)
    assert missing.status == 404
    async with AsyncClient(stack.base_url) as pb:
        task = await pb.create(PROBE)
        with pytest.raises(WaitTimeout):
            await pb.wait(task.task_id, timeout=0.001)


def test_sse_parser() -> None:
    parser = SseParser()
    lines = ["retry: 1000", "", ": keep-alive", "", "id: 4", "event: state", "data: {}", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.event, e.id, e.data) for e in events] == [("state", "4", "{}")]
