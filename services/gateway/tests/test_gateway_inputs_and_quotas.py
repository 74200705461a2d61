"""Inline images moved out of a task's input (``store_inline_images``), the per-key turns
of the quota counters, and the msgspec JSON answer. Pure: the Object Store is a
recording stand-in (the part under test is the walk and the rewrite of ``input_data``)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX, input_object_names
from pixelbus.contracts.validation import TaskSpec, ValidationFailed
from pixelbus.gateway.auth import Principal
from pixelbus.gateway.inputs import store_inline_images
from pixelbus.gateway.quotas import ActiveTasks, KeyTurns, RateLimiter
from pixelbus.gateway.responses import Json


class RecordingObjects:
    """Stands in for the JetStream Object Store: keeps what is put, by name."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.objects[name] = data


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def spec(input_data: dict[str, Any]) -> TaskSpec:
    return TaskSpec(task_id="t1", workflow="wf", environment="comm", input_data=input_data)


async def test_every_inline_image_is_stored_and_replaced_by_a_reference_wherever_it_is() -> None:
    source, target, loaded = b"source-bytes", b"target-bytes", b"graph-image"
    input_data: dict[str, Any] = {
        "wf_json": {
            "source_url": data_uri(source),
            "target_url": data_uri(target, "image/jpeg"),
            "resolution": "1024x1024",
        },
        "graph": {"12": {"inputs": {"image": data_uri(loaded)}}},
        "images": ["https://example.com/a.png", data_uri(source)],
    }
    objects = RecordingObjects()
    stored = await store_inline_images(objects, "t1", spec(input_data), max_bytes=1024)  # type: ignore[arg-type]

    names = input_object_names(stored)
    assert len(names) == 4 and len(objects.objects) == 4
    assert [objects.objects[name] for name in names] == [source, target, loaded, source]
    assert all(name.startswith("inputs/t1/") for name in names)
    # Everything else is kept as it was, and the caller's input is not changed in place.
    assert stored["wf_json"]["resolution"] == "1024x1024"
    assert stored["images"][0] == "https://example.com/a.png"
    assert stored["wf_json"]["source_url"].startswith(INPUT_OBJECT_PREFIX)
    assert input_data["wf_json"]["source_url"] == data_uri(source)


async def test_without_inline_images_nothing_is_stored() -> None:
    objects = RecordingObjects()
    input_data = {"wf_json": {"source_url": "https://example.com/s.jpg"}, "n": [1, 2]}
    stored = await store_inline_images(objects, "t1", spec(input_data), max_bytes=1024)  # type: ignore[arg-type]
    assert stored == input_data and objects.objects == {}


async def test_two_creates_of_one_task_id_never_share_input_names() -> None:
    """A retried or racing create must not overwrite inputs a worker may be reading."""
    objects = RecordingObjects()
    input_data = {"wf_json": {"source_url": data_uri(b"x")}}
    first = await store_inline_images(objects, "t1", spec(input_data), max_bytes=1024)  # type: ignore[arg-type]
    second = await store_inline_images(objects, "t1", spec(input_data), max_bytes=1024)  # type: ignore[arg-type]
    assert input_object_names(first) != input_object_names(second)
    assert len(objects.objects) == 2


async def test_every_bad_inline_image_is_named_by_its_field() -> None:
    objects = RecordingObjects()
    input_data = {
        "wf_json": {"source_url": data_uri(b"x" * 2000), "target_url": "data:image/png,plain"},
        "list": [data_uri(b"ok")],
    }
    with pytest.raises(ValidationFailed) as refused:
        await store_inline_images(objects, "t1", spec(input_data), max_bytes=1024)  # type: ignore[arg-type]
    locs = sorted(error.loc for error in refused.value.errors)
    assert locs == [
        ("body", "params", "input_data", "wf_json", "source_url"),
        ("body", "params", "input_data", "wf_json", "target_url"),
    ]
    messages = {error.loc[-1]: error.msg for error in refused.value.errors}
    assert "1024" in messages["source_url"] and "base64" in messages["target_url"]


# -- quota counters --------------------------------------------------------------------------


async def test_turns_of_one_key_never_overlap_and_other_keys_do_not_wait() -> None:
    turns = KeyTurns()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    release = asyncio.Event()
    holder_in = asyncio.Event()

    async def hold(key: str) -> None:
        async with turns.turn(key):
            inside.append(key)
            holder_in.set()
            await release.wait()
            inside.remove(key)

    async def take(key: str) -> None:
        async with turns.turn(key):
            overlaps.append(tuple(inside))

    holder = asyncio.create_task(hold("tenant-a"))
    await asyncio.wait_for(holder_in.wait(), 5)
    # Another key gets its turn while tenant-a's is held.
    await asyncio.wait_for(take("tenant-b"), 5)
    assert overlaps == [("tenant-a",)]
    # The same key waits until the holder is done.
    waiting = asyncio.create_task(take("tenant-a"))
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, waiting), 5)
    assert overlaps == [("tenant-a",), ()]


async def test_a_key_s_turn_is_free_again_after_an_error_inside_it() -> None:
    turns = KeyTurns()
    with pytest.raises(RuntimeError):
        async with turns.turn("k"):
            raise RuntimeError("boom")
    await asyncio.wait_for(_enter(turns, "k"), 1)


async def _enter(turns: KeyTurns, key: str) -> None:
    async with turns.turn(key):
        pass


async def test_without_a_bucket_or_a_limit_nothing_is_counted_or_refused() -> None:
    """Open development mode: no rate limit and no quota (limit 0), no bucket touched."""
    caller = Principal(owner="acme", scopes=frozenset({"tasks:write"}))
    await RateLimiter(None, 5.0).check(caller)
    assert await ActiveTasks(None, 10).reserve(caller) is False
    assert await ActiveTasks(None, 0).reserve(caller) is False
    await ActiveTasks(None, 10).release("acme")


# -- answers -----------------------------------------------------------------------------------


def test_json_answers_are_encoded_compactly_with_their_media_type() -> None:
    answer = Json({"taskId": "t1", "status": "PENDING", "outputs": [], "n": 1.5})
    assert answer.body == b'{"taskId":"t1","status":"PENDING","outputs":[],"n":1.5}'
    assert answer.media_type == "application/json"
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-length"] == str(len(answer.body))
