"""``pixelbus submit|status|watch|cancel|list|download`` as a user runs them: the real
command in its own process against the in-process stack over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from pixelbus.testkit.nats_server import NatsServer
from tests.stack import Stack, running_stack, start_worker

pytestmark = pytest.mark.e2e


async def pixelbus(stack: Stack, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbus.cli",
        *args,
        env={**os.environ, "PIXELBUS_URL": stack.base_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_watch_shows_a_progress_bar_until_the_task_completes(
    nats_server: NatsServer, tmp_path: Path, astronaut: Path, grace_hopper: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        code, out, err = await pixelbus(
            stack,
            "submit",
            "face-swap",
            "--source",
            str(astronaut),
            "--target",
            str(grace_hopper),
            "--resolution",
            "128x150",
            "--json",
        )
        assert code == 0, err
        task_id = json.loads(out)["taskId"]
        watch = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixelbus.cli",
            "watch",
            task_id,
            env={**os.environ, "PIXELBUS_URL": stack.base_url},
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert watch.stdout is not None
        first = await asyncio.wait_for(watch.stdout.readline(), 30)
        assert first.decode().strip() == "PENDING, queue position 1"
        worker = await start_worker(stack.env, stack.nc)
        runner = asyncio.create_task(worker.run())
        try:
            rest = (await asyncio.wait_for(watch.stdout.read(), 60)).decode()
            assert await watch.wait() == 0
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 10)
    terminal = first.decode() + rest
    print(terminal)  # the captured terminal output
    bars = [line for line in terminal.splitlines() if line.startswith("[")]
    assert any("#" in bar and "%  PROCESSING" in bar for bar in bars), terminal
    assert bars[-1].startswith("[" + "#" * 30 + "] 100%  COMPLETED"), terminal
    assert f"{task_id}  COMPLETED  (face_swap)" in terminal
    assert "output: http://" in terminal


async def test_submit_wait_status_list_download_and_cancel(
    stack: Stack, astronaut: Path, grace_hopper: Path, tmp_path: Path
) -> None:
    code, out, err = await pixelbus(
        stack,
        "submit",
        "face-swap",
        "--source",
        str(astronaut),
        "--target",
        str(grace_hopper),
        "--resolution",
        "128x150",
        "--wait",
        "--json",
    )
    assert code == 0, err
    states = [json.loads(line) for line in out.splitlines()]
    task_id = states[-1]["taskId"]
    assert states[-1]["status"] == "COMPLETED"

    code, out, _ = await pixelbus(stack, "status", task_id)
    assert code == 0 and f"{task_id}  COMPLETED" in out

    code, out, _ = await pixelbus(stack, "list", "--json")
    assert code == 0 and task_id in [t["taskId"] for t in json.loads(out)]

    code, out, _ = await pixelbus(stack, "download", task_id, "-o", str(tmp_path / "out"))
    assert code == 0, out
    saved = tmp_path / "out" / "result.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, _, err = await pixelbus(stack, "cancel", task_id)
    assert code == 3 and "409" in err and "already COMPLETED" in err


async def test_clear_messages_for_bad_input_and_network_errors(
    stack: Stack, tmp_path: Path
) -> None:
    code, _, err = await pixelbus(
        stack, "submit", "face-swap", "--source", str(tmp_path / "missing.jpg"), "--target", "x"
    )
    assert code == 2 and "cannot read" in err and "missing.jpg" in err

    code, _, err = await pixelbus(
        stack,
        "submit",
        "face-swap",
        "--source",
        "https://example.com/a.jpg",
        "--target",
        "https://example.com/b.jpg",
        "--resolution",
        "huge",
    )
    assert code == 2 and "wf_json.resolution" in err, err

    graph = tmp_path / "graph.json"
    graph.write_text("[1, 2]")
    code, _, err = await pixelbus(stack, "submit", "comfy", str(graph))
    assert code == 2 and "expected a JSON object" in err

    code, _, err = await pixelbus(stack, "status", "task_unknown")
    assert code == 3 and "404" in err

    code, _, err = await pixelbus(stack, "status", "x", "--url", "http://127.0.0.1:9")
    assert code == 3 and "cannot reach the gateway at http://127.0.0.1:9" in err
