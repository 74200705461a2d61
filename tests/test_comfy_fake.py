"""The fake ComfyUI speaks the protocol of ``ComfyUI-PROTOCOL.md``, message for message."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

from pixelbus.testkit.fake_comfyui import FakeComfyUI


def graph(color: int = 0x336699) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}},
    }


@pytest.fixture
async def http(fake_comfyui: FakeComfyUI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_comfyui.url) as client:
        yield client


def ws_url(fake: FakeComfyUI, client_id: str | None) -> str:
    base = fake.url.replace("http://", "ws://") + "/ws"
    return f"{base}?clientId={client_id}" if client_id else base


async def frames_until_done(ws: ClientConnection, prompt_id: str) -> list[Any]:
    """Every frame (JSON, or the binary event number) up to ``executing {node: null}``."""
    seen: list[Any] = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(frame, bytes):
            seen.append(("binary", struct.unpack(">I", frame[:4])[0]))
            continue
        message = json.loads(frame)
        seen.append(message)
        data = message["data"]
        if (
            message["type"] == "executing"
            and data.get("node") is None
            and data.get("prompt_id") == prompt_id
        ):
            return seen


async def test_a_run_sends_the_documented_sequence(
    fake_comfyui: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake_comfyui.steps["ImageInvert"] = 2
    async with connect(ws_url(fake_comfyui, "me")) as ws:
        first = json.loads(await ws.recv())
        assert first == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"},
        }
        answer = (await http.post("/prompt", json={"prompt": graph(), "client_id": "me"})).json()
        assert answer["number"] == 0 and answer["node_errors"] == {}
        frames = await frames_until_done(ws, answer["prompt_id"])
    kinds = [f["type"] if isinstance(f, dict) else f[0] for f in frames]
    assert kinds[0] == "status"
    order = [k for k in kinds if k not in ("status", "progress_state")]
    assert order == [
        "execution_start",
        "execution_cached",
        "executing",
        "executing",
        "progress",
        "binary",
        "progress",
        "binary",
        "executing",
        "executed",
        "execution_success",
        "executing",
    ]
    assert kinds[-2:] == ["status", "executing"]  # history is saved before the final message
    executed = next(f for f in frames if isinstance(f, dict) and f["type"] == "executed")
    [item] = executed["data"]["output"]["images"]
    assert item["type"] == "output" and item["filename"] == "f_00001_.png"
    history = (await http.get(f"/history/{answer['prompt_id']}")).json()[answer["prompt_id"]]
    assert history["status"]["status_str"] == "success" and history["prompt"][4] == ["3"]
    image = await http.get("/api/view", params=item)
    with Image.open(io.BytesIO(image.content)) as png:
        assert png.convert("RGB").getpixel((0, 0)) == (0xFF - 0x33, 0xFF - 0x66, 0xFF - 0x99)


async def kinds_before_pong(ws: ClientConnection) -> list[str]:
    """The kinds of the frames the server sent before it answered a ping: they travel in
    order on one connection, so once the pong is in, they are all buffered here."""
    await asyncio.wait_for(await ws.ping(), 5)
    kinds = []
    while True:
        try:
            async with asyncio.timeout(0):  # only what is buffered already: no waiting
                frame = await ws.recv()
        except TimeoutError:
            return kinds
        kinds.append(json.loads(frame)["type"] if isinstance(frame, str) else "binary")


async def kinds_until_idle(ws: ClientConnection) -> list[str]:
    """The kinds of the frames before the status saying the queue is empty again, which
    every socket gets after a run's last event (a marker to wait for, not a quiet window)."""
    kinds = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(frame, bytes):
            kinds.append("binary")
            continue
        message = json.loads(frame)
        if message["type"] == "status" and message["data"]["status"]["exec_info"] == {
            "queue_remaining": 0
        }:
            return kinds
        kinds.append(message["type"])


async def test_routing_by_client_id(fake_comfyui: FakeComfyUI, http: httpx.AsyncClient) -> None:
    fake_comfyui.steps["ImageInvert"] = 1
    async with (
        connect(ws_url(fake_comfyui, None)) as anonymous,
        connect(ws_url(fake_comfyui, "a")) as old,
    ):
        sid = json.loads(await anonymous.recv())["data"]["sid"]
        assert len(sid) == 32
        await old.recv()
        async with connect(ws_url(fake_comfyui, "a")) as new:
            await new.recv()
            answer = (
                await http.post("/prompt", json={"prompt": graph(1), "client_id": "a"})
            ).json()
            new_frames = await frames_until_done(new, answer["prompt_id"])
        assert any(isinstance(f, dict) and f["type"] == "execution_start" for f in new_frames)
        # the older socket with the same id went silent; the anonymous one saw only the
        # queue's status, when the prompt was queued and when it was done
        assert await kinds_before_pong(old) == []
        assert await kinds_before_pong(anonymous) == ["status", "status"]
        # without a client id nobody gets execution events, everyone gets progress
        answer = (await http.post("/prompt", json={"prompt": graph(2)})).json()
        kinds = await kinds_until_idle(anonymous)
        assert "progress" in kinds and "progress_state" in kinds
        assert not {"execution_start", "executing", "executed", "execution_success"} & set(kinds)


async def test_refusals_and_http_errors(fake_comfyui: FakeComfyUI, http: httpx.AsyncClient) -> None:
    malformed = await http.post(
        "/prompt", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 500 and not malformed.headers["content-type"].startswith(
        "application/json"
    )
    missing = graph()
    del missing["2"]["class_type"]
    refused = (await http.post("/prompt", json={"prompt": missing})).json()
    assert refused["error"]["type"] == "invalid_prompt" and refused["node_errors"] == {}
    assert refused["error"]["details"] == "Node ID '#2'"
    dangling = graph()
    dangling["2"]["inputs"]["image"] = ["99", 0]
    body = (await http.post("/prompt", json={"prompt": dangling})).json()
    assert body["node_errors"]["2"]["errors"][0]["type"] == "exception_during_inner_validation"
    load = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    response = await http.post("/prompt", json={"prompt": load})
    assert response.status_code == 400
    assert response.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    for params, status in [
        ({"filename": "x.png", "type": "weird"}, 400),
        ({"filename": "../x.png"}, 400),
        ({"filename": "x.png", "subfolder": "../../etc"}, 403),
        ({"filename": "missing.png"}, 404),
    ]:
        assert (await http.get("/view", params=params)).status_code == status, params
    assert (await http.get("/object_info/NoSuchNode")).json() == {}
    assert (await http.get("/object_info/SaveImage")).json()["SaveImage"]["output_node"] is True
    assert (await http.post("/free", json={})).status_code == 200


async def test_upload_dedupes_identical_files_and_renames_different_ones(
    http: httpx.AsyncClient,
) -> None:
    def upload(data: bytes) -> Any:
        return http.post("/upload/image", files={"image": ("a.png", data)}, data={"subfolder": "s"})

    first = (await upload(b"one")).json()
    again = (await upload(b"one")).json()
    other = (await upload(b"two")).json()
    assert first == again == {"name": "a.png", "subfolder": "s", "type": "input"}
    assert other["name"] == "a (1).png"


async def test_queue_delete_interrupt_front_and_restart(
    fake_comfyui: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake_comfyui.delays["ImageInvert"] = 0.5
    running = (await http.post("/prompt", json={"prompt": graph(10), "client_id": "x"})).json()[
        "prompt_id"
    ]
    await fake_comfyui.wait_until(lambda f: f.running_prompt == running)
    pending = (await http.post("/prompt", json={"prompt": graph(11)})).json()["prompt_id"]
    front = (await http.post("/prompt", json={"prompt": graph(12), "front": True})).json()
    assert front["number"] < 0
    queue = (await http.get("/queue")).json()
    assert queue["queue_running"][0][1] == running and len(queue["queue_pending"]) == 2
    await http.post("/queue", json={"delete": [running, pending]})  # the running one stays
    assert fake_comfyui.running_prompt == running and fake_comfyui.pending_prompts == [
        front["prompt_id"]
    ]
    await http.post("/interrupt", json={"prompt_id": pending})  # not running: nothing happens
    await http.post("/interrupt", json={"prompt_id": running})
    await fake_comfyui.wait_until(lambda f: f.history_of(running) is not None)
    assert fake_comfyui.history_of(running)["status"]["status_str"] == "error"
    await fake_comfyui.crash()
    with pytest.raises(httpx.ConnectError):
        await http.get("/queue")
    await fake_comfyui.start()
    assert (await http.get(f"/history/{running}")).json() == {}
    assert (await http.post("/prompt", json={"prompt": graph(13)})).json()["number"] == 0


async def test_reconnect_mid_run_resends_executing_without_prompt_id(
    fake_comfyui: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake_comfyui.delays["ImageInvert"] = 0.5
    (await http.post("/prompt", json={"prompt": graph(20), "client_id": "r"}))
    await fake_comfyui.wait_until(lambda f: f._current_node == "2")
    async with connect(ws_url(fake_comfyui, "r")) as ws:
        await ws.recv()  # status
        again = json.loads(await ws.recv())
    assert again == {"type": "executing", "data": {"node": "2", "display_node": "2"}}


async def test_text_frames_go_to_every_socket(
    fake_comfyui: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake_comfyui.texts["ImageInvert"] = "hello"
    async with (
        connect(ws_url(fake_comfyui, "mine")) as mine,
        connect(ws_url(fake_comfyui, "other")) as other,
    ):
        await mine.recv()
        await other.recv()
        answer = (
            await http.post("/prompt", json={"prompt": graph(40), "client_id": "mine"})
        ).json()
        while True:
            frame = await asyncio.wait_for(other.recv(), 5)
            if isinstance(frame, bytes):
                break
        assert ("binary", 3) in await frames_until_done(mine, answer["prompt_id"])
    kind, length = struct.unpack(">II", frame[:8])
    assert kind == 3 and frame[8 : 8 + length] == b"2" and frame[8 + length :] == b"hello"


async def test_preview_metadata_frames_when_asked(
    fake_comfyui: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake_comfyui.steps["ImageInvert"] = 1
    async with connect(ws_url(fake_comfyui, "p")) as ws:
        await ws.recv()
        await ws.send(
            json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        )
        await fake_comfyui.wait_until(lambda f: f.previews_with_metadata("p"))
        answer = (await http.post("/prompt", json={"prompt": graph(30), "client_id": "p"})).json()
        while True:
            frame = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(frame, bytes):
                break
    kind, length = struct.unpack(">II", frame[:8])
    meta = json.loads(frame[8 : 8 + length])
    assert kind == 4 and meta["prompt_id"] == answer["prompt_id"] and meta["node_id"] == "2"
    assert frame[8 + length : 8 + length + 3] == b"\xff\xd8\xff"
