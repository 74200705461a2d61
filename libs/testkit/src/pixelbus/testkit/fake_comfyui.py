"""A protocol-faithful fake ComfyUI: a real HTTP + WebSocket server on a loopback port.

It follows ``ComfyUI-PROTOCOL.md`` (ComfyUI 0.8.0) message for message, and "executes" a
few model-free node types by really doing the image operation with Pillow:

``EmptyImage``, ``ImageInvert``, ``ImageScale``, ``LoadImage``, ``SaveImage``,
``PreviewImage``, ``SaveAnimatedWEBP``, ``EmptyLatentImage``, ``SaveLatent``.

Any other class type is unknown, as on a server without that custom node.

Routes (each also under ``/api/``): ``POST /prompt``, ``GET /history[/{id}]``,
``GET /view``, ``POST /upload/image``, ``GET|POST /queue``, ``POST /interrupt``,
``GET /system_stats``, ``GET /object_info[/{type}]``, ``POST /free``, ``GET /ws``.

Knobs for tests (plain attributes, set before or during a run):

- ``delays[class_type]`` — seconds a node of that type takes;
- ``steps[class_type]`` — the node reports that many ``progress`` steps (each followed by
  a binary preview frame), spread over its delay;
- ``failures[class_type]`` — the node raises (``execution_error``) with this message;
- ``crash_on[class_type]`` — the server dies when such a node starts (sockets close with
  1006, queue and history are lost, and it stays down until ``start()``);
- ``history_lag_s`` — the pause between ``execution_success`` and saving the history
  (the history race of a real server);
- ``texts[class_type]`` — the node sends this text as a binary text frame (event 3),
  to every socket, as nodes that display text do.

``calls`` records every HTTP request (method, path, JSON body); ``wait_for_call`` waits
for one. ``crash()`` kills the server as a restart would; ``start()`` brings it back on
the same port (empty queue and history, ``number`` from 0, ``temp/`` wiped).

Run standalone: ``python -m pixelbus.testkit.fake_comfyui --port 8188``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSCloseCode, web
from PIL import Image, ImageOps

__all__ = ["Call", "FakeComfyUI", "fake_comfyui"]

Json = dict[str, Any]
_FOLDERS = ("input", "output", "temp")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None


class NodeFailure(Exception):
    """A node's exception during execution (becomes ``execution_error``)."""


class _Interrupted(Exception):
    pass


class _Crashed(Exception):
    pass


# --- node definitions --------------------------------------------------------------------

_INT_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class _Input:
    kind: str  # INT, FLOAT, STRING, BOOLEAN, IMAGE, LATENT, MASK, or "COMBO"
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _NodeDef:
    inputs: dict[str, _Input]
    returns: tuple[str, ...]
    output_node: bool = False
    category: str = "image"


_SCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
_NODES: dict[str, _NodeDef] = {
    "EmptyImage": _NodeDef(
        {
            "width": _Input("INT", 512, 1, 16384),
            "height": _Input("INT", 512, 1, 16384),
            "batch_size": _Input("INT", 1, 1, 4096),
            "color": _Input("INT", 0, 0, 0xFFFFFF),
        },
        ("IMAGE",),
    ),
    "ImageInvert": _NodeDef({"image": _Input("IMAGE")}, ("IMAGE",)),
    "ImageScale": _NodeDef(
        {
            "image": _Input("IMAGE"),
            "upscale_method": _Input("COMBO", choices=_SCALE_METHODS),
            "width": _Input("INT", 512, 0, 16384),
            "height": _Input("INT", 512, 0, 16384),
            "crop": _Input("COMBO", choices=("disabled", "center")),
        },
        ("IMAGE",),
    ),
    "LoadImage": _NodeDef({"image": _Input("COMBO")}, ("IMAGE", "MASK")),
    "SaveImage": _NodeDef(
        {"images": _Input("IMAGE"), "filename_prefix": _Input("STRING", "ComfyUI")},
        (),
        output_node=True,
    ),
    "PreviewImage": _NodeDef({"images": _Input("IMAGE")}, (), output_node=True),
    "SaveAnimatedWEBP": _NodeDef(
        {
            "images": _Input("IMAGE"),
            "filename_prefix": _Input("STRING", "ComfyUI"),
            "fps": _Input("FLOAT", 6.0, 0.01, 1000.0),
            "lossless": _Input("BOOLEAN", True),
            "quality": _Input("INT", 80, 0, 100),
            "method": _Input("COMBO", choices=("default", "fastest", "slowest")),
        },
        (),
        output_node=True,
    ),
    "EmptyLatentImage": _NodeDef(
        {
            "width": _Input("INT", 512, 16, 16384),
            "height": _Input("INT", 512, 16, 16384),
            "batch_size": _Input("INT", 1, 1, 4096),
        },
        ("LATENT",),
        category="latent",
    ),
    "SaveLatent": _NodeDef(
        {"samples": _Input("LATENT"), "filename_prefix": _Input("STRING", "latents/ComfyUI")},
        (),
        output_node=True,
        category="_for_testing",
    ),
}


def _object_info(name: str, node: _NodeDef, input_files: list[str]) -> Json:
    required: Json = {}
    for key, spec in node.inputs.items():
        if spec.kind == "COMBO":
            choices = input_files if name == "LoadImage" else list(spec.choices or ())
            required[key] = [choices, {}]
        else:
            options = {
                k: v
                for k, v in (("default", spec.default), ("min", spec.min), ("max", spec.max))
                if v is not None
            }
            required[key] = [spec.kind, options]
    return {
        "input": {"required": required},
        "input_order": {"required": list(node.inputs)},
        "output": list(node.returns),
        "output_is_list": [False] * len(node.returns),
        "output_name": list(node.returns),
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": "nodes",
        "category": node.category,
        "output_node": node.output_node,
    }


# --- the server ----------------------------------------------------------------------------


@dataclass
class _Prompt:
    number: int
    prompt_id: str
    graph: Json
    extra: Json
    outputs: list[str]
    client_id: str | None

    def entry(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra, self.outputs]


@dataclass
class _Socket:
    sid: str
    ws: web.WebSocketResponse
    preview_metadata: bool = False


@dataclass
class FakeComfyUI:
    """One fake ComfyUI server; ``root`` holds its input/output/temp folders."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    delays: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    crash_on: dict[str, bool] = field(default_factory=dict)
    history_lag_s: float = 0.0
    texts: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        for folder in _FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._sockets: dict[str, _Socket] = {}
        self._pending: list[_Prompt] = []
        self._running: _Prompt | None = None
        self._history: dict[str, Json] = {}
        self._number = 0
        self._wake = asyncio.Event()
        self._interrupt = False
        self._cache: dict[str, tuple[list[Any], Json | None]] = {}
        self._changed = asyncio.Condition()
        self._current_node: str | None = None
        self.executed_nodes: list[tuple[str, str]] = []  # (prompt id, node id) really run
        self.started = 0

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again, on the same port after a crash) with an empty queue and history."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("", "/api"):
            app.router.add_post(f"{prefix}/prompt", self._post_prompt)
            app.router.add_get(f"{prefix}/prompt", self._get_prompt)
            app.router.add_get(f"{prefix}/history", self._get_history_all)
            app.router.add_get(f"{prefix}/history/{{prompt_id}}", self._get_history)
            app.router.add_get(f"{prefix}/view", self._view)
            app.router.add_post(f"{prefix}/upload/image", self._upload)
            app.router.add_get(f"{prefix}/queue", self._get_queue)
            app.router.add_post(f"{prefix}/queue", self._post_queue)
            app.router.add_post(f"{prefix}/interrupt", self._post_interrupt)
            app.router.add_get(f"{prefix}/system_stats", self._system_stats)
            app.router.add_get(f"{prefix}/object_info", self._object_info_all)
            app.router.add_get(f"{prefix}/object_info/{{node_class}}", self._object_info_one)
            app.router.add_post(f"{prefix}/free", self._free)
            app.router.add_get(f"{prefix}/ws", self._ws)
        app.middlewares.append(self._record)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self._runner = runner
        self._pending, self._running, self._history, self._number = [], None, {}, 0
        self._cache = {}
        shutil.rmtree(self.root / "temp", ignore_errors=True)
        (self.root / "temp").mkdir()
        self._worker = asyncio.create_task(self._work())
        self.started += 1

    async def stop(self) -> None:
        """Shut down: sockets close with 1001 (going away)."""
        await self._shutdown(abort=False)

    async def crash(self) -> None:
        """Die as a killed process does: sockets drop (1006), queue and history lost."""
        await self._shutdown(abort=True)

    def drop_sockets(self) -> None:
        """Cut every WebSocket (1006) while the server keeps running (a network blip)."""
        for sock in list(self._sockets.values()):
            transport = sock.ws._req.transport if sock.ws._req is not None else None
            if transport is not None:
                transport.abort()

    async def _shutdown(self, *, abort: bool) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if abort:  # as the kernel does for a killed process: every connection is reset
            self.drop_sockets()
            server = runner.server
            for connection in list(server.connections) if server is not None else []:
                if connection.transport is not None:
                    connection.transport.abort()
        for sock in list(self._sockets.values()):
            if not abort:
                with contextlib.suppress(Exception):
                    await sock.ws.close(code=WSCloseCode.GOING_AWAY)
        self._sockets.clear()
        self._pending, self._running, self._history = [], None, {}
        await runner.cleanup()
        await self._notify()

    # --- call log ---

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Any]) -> Any:
        body: Any = None
        if request.method == "POST" and request.content_type == "application/json":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        path = request.path.removeprefix("/api")
        self.calls.append(Call(request.method, path, body))
        await self._notify()
        return await handler(request)

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    async def wait_for_call(
        self,
        method: str,
        path: str,
        predicate: Callable[[Call], bool] = lambda _: True,
        timeout: float = 10,
    ) -> Call:
        async def seen() -> Call:
            async with self._changed:
                while True:
                    for call in self.calls:
                        if call.method == method and call.path == path and predicate(call):
                            return call
                    await self._changed.wait()

        return await asyncio.wait_for(seen(), timeout)

    async def wait_until(
        self, predicate: Callable[[FakeComfyUI], bool], timeout: float = 10
    ) -> None:
        """Wait until ``predicate(self)`` holds (checked on every change of state)."""

        async def seen() -> None:
            async with self._changed:
                while not predicate(self):
                    await self._changed.wait()

        await asyncio.wait_for(seen(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- introspection for tests ---

    @property
    def running_prompt(self) -> str | None:
        return self._running.prompt_id if self._running else None

    @property
    def pending_prompts(self) -> list[str]:
        return [p.prompt_id for p in sorted(self._pending, key=lambda p: p.number)]

    def previews_with_metadata(self, client_id: str) -> bool:
        """Whether that client's socket asked for preview metadata (``feature_flags``)."""
        sock = self._sockets.get(client_id)
        return sock is not None and sock.preview_metadata

    def history_of(self, prompt_id: str) -> Json | None:
        return self._history.get(prompt_id)

    # --- WebSocket ---

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        sock = _Socket(sid, ws)
        self._sockets[sid] = sock  # a newer socket with the same id replaces the older
        try:
            await self._send_one(sock, "status", {"status": self._status(), "sid": sid})
            running = self._running
            if running is not None and running.client_id == sid and self._current_node:
                # reconnecting mid-run: the node being run, WITHOUT a prompt id
                await self._send_one(
                    sock,
                    "executing",
                    {"node": self._current_node, "display_node": self._current_node},
                )
            async for message in ws:
                if message.type.name != "TEXT":
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    data = json.loads(message.data)
                    if data.get("type") == "feature_flags":
                        sock.preview_metadata = bool(
                            (data.get("data") or {}).get("supports_preview_metadata")
                        )
                        await self._notify()
        finally:
            if self._sockets.get(sid) is sock:
                del self._sockets[sid]
        return ws

    def _status(self) -> Json:
        remaining = len(self._pending) + (1 if self._running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _send_one(self, sock: _Socket, kind: str, data: Json) -> None:
        with contextlib.suppress(Exception):
            await sock.ws.send_str(json.dumps({"type": kind, "data": data}))

    def _sockets_for(self, sid: str | None) -> list[_Socket]:
        """The socket of ``sid`` only, or every socket when ``sid`` is None (as ComfyUI
        sends)."""
        if sid is None:
            return list(self._sockets.values())
        sock = self._sockets.get(sid)
        return [sock] if sock is not None else []

    async def _send(self, kind: str, data: Json, sid: str | None) -> None:
        for sock in self._sockets_for(sid):
            await self._send_one(sock, kind, data)

    async def _send_exec(self, kind: str, data: Json, prompt: _Prompt) -> None:
        """Execution events go to the prompt's client only; nobody gets them without one."""
        if prompt.client_id is not None:
            await self._send(kind, data, prompt.client_id)

    async def _broadcast_status(self) -> None:
        await self._send("status", {"status": self._status()}, None)

    async def _send_preview(self, prompt: _Prompt, node_id: str, image: bytes) -> None:
        for sock in self._sockets_for(prompt.client_id):
            if sock.preview_metadata:
                meta = json.dumps(
                    {
                        "node_id": node_id,
                        "prompt_id": prompt.prompt_id,
                        "display_node_id": node_id,
                        "parent_node_id": None,
                        "real_node_id": node_id,
                        "image_type": "image/jpeg",
                    }
                ).encode()
                frame = struct.pack(">II", 4, len(meta)) + meta + image
            else:
                frame = struct.pack(">II", 1, 1) + image
            with contextlib.suppress(Exception):
                await sock.ws.send_bytes(frame)

    # --- HTTP: prompts and queue ---

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return web.Response(status=500, text=f"500 Internal Server Error\n\n{exc}")
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return _refuse("invalid_prompt", "Invalid prompt", "no prompt")
        graph: Json = body["prompt"]
        refused = self._validate(graph)
        if isinstance(refused, web.Response):
            return refused
        outputs, node_errors = refused
        number = self._number
        self._number += 1
        if body.get("front"):
            number = -number
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        client_id = body.get("client_id")
        extra = dict(body.get("extra_data") or {})
        if client_id:
            extra["client_id"] = client_id
        prompt = _Prompt(number, prompt_id, graph, extra, outputs, client_id or None)
        self._pending.append(prompt)
        self._wake.set()
        await self._broadcast_status()
        await self._notify()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._status())

    def _validate(self, graph: Json) -> web.Response | tuple[list[str], Json]:
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in _NODES:
                message = (
                    "Cannot execute because a node is missing the class_type property."
                    if class_type is None
                    else f"Cannot execute because node {class_type} does not exist."
                )
                return _refuse("invalid_prompt", message, f"Node ID '#{node_id}'")
        outputs = [nid for nid, node in graph.items() if _NODES[node["class_type"]].output_node]
        if not outputs:
            error = _error("prompt_no_outputs", "Prompt has no outputs", "")
            return web.json_response({"error": error, "node_errors": []}, status=400)
        good: list[str] = []
        node_errors: Json = {}
        for output in outputs:
            errors: dict[str, list[Json]] = {}
            self._validate_node(graph, output, errors, set())
            if not errors:
                good.append(output)
                continue
            for nid, errs in errors.items():
                entry = node_errors.setdefault(
                    nid,
                    {
                        "errors": errs,
                        "dependent_outputs": [],
                        "class_type": graph[nid]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(output)
        if not good:
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", ""
            )
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        return good, node_errors

    def _validate_node(
        self, graph: Json, node_id: str, errors: dict[str, list[Json]], seen: set[str]
    ) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        node = graph[node_id]
        definition = _NODES[node["class_type"]]
        inputs = node.get("inputs") or {}
        problems: list[Json] = []
        for name, spec in definition.inputs.items():
            if name not in inputs:
                problems.append(_error("required_input_missing", "Required input is missing", name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2 or not isinstance(value[0], str):
                    problems.append(_error("bad_linked_input", "Bad linked input", name))
                    continue
                source_id, slot = value
                if source_id not in graph:
                    problems.append(
                        _error(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            f"{name}, {source_id}",
                        )
                    )
                    continue
                source = _NODES[graph[source_id]["class_type"]]
                got = source.returns[slot] if 0 <= slot < len(source.returns) else None
                if got != spec.kind:
                    problems.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({got}) mismatch input_type({spec.kind})",
                        )
                    )
                    continue
                self._validate_node(graph, source_id, errors, seen)
                continue
            problem = self._check_value(node["class_type"], name, spec, value)
            if problem is not None:
                problems.append(problem)
        if problems:
            errors[node_id] = problems

    def _check_value(self, class_type: str, name: str, spec: _Input, value: Any) -> Json | None:
        if spec.kind in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {spec.kind} value",
                    f"{name}, {value}",
                )
            if spec.min is not None and value < spec.min:
                return _error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {spec.min:g}",
                    f"{name}",
                )
            if spec.max is not None and value > spec.max:
                return _error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {spec.max:g}",
                    f"{name}",
                )
        elif spec.kind == "COMBO" and class_type == "LoadImage":
            if not isinstance(value, str) or not self._input_file(value).is_file():
                return _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"{name} - Invalid image file: {value}",
                )
        elif spec.kind == "COMBO" and value not in (spec.choices or ()):
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {list(spec.choices or ())}",
            )
        elif spec.kind in ("IMAGE", "LATENT", "MASK"):
            return _error("required_input_missing", "Required input is missing", name)
        return None

    def _input_file(self, name: str) -> Path:
        base = (self.root / "input").resolve()
        path = (base / name).resolve()
        return path if path.is_relative_to(base) else base / "\0"

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.entry()] if self._running else []
        pending = [p.entry() for p in self._pending]  # heap order, as the server answers
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        if body.get("clear"):
            self._pending.clear()
        doomed = set(body.get("delete") or ())
        if doomed:
            self._pending = [p for p in self._pending if p.prompt_id not in doomed]
        await self._broadcast_status()
        await self._notify()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        target = body.get("prompt_id") if isinstance(body, dict) else None
        running = self._running
        if running is not None and (target is None or target == running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self._history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _get_history_all(self, request: web.Request) -> web.Response:
        return web.json_response(self._history)

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": 8 << 30,
                    "ram_free": 4 << 30,
                    "comfyui_version": "0.8.0",
                    "python_version": "3.11",
                    "pytorch_version": "fake",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 8 << 30,
                        "vram_free": 4 << 30,
                        "torch_vram_total": 8 << 30,
                        "torch_vram_free": 4 << 30,
                    }
                ],
            }
        )

    async def _object_info_all(self, request: web.Request) -> web.Response:
        files = self._input_files()
        return web.json_response({n: _object_info(n, d, files) for n, d in _NODES.items()})

    async def _object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node = _NODES.get(name)
        if node is None:
            return web.json_response({})
        return web.json_response({name: _object_info(name, node, self._input_files())})

    def _input_files(self) -> list[str]:
        base = self.root / "input"
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    async def _free(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # --- HTTP: files ---

    async def _view(self, request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        kind = request.query.get("type", "output") or "output"
        subfolder = request.query.get("subfolder", "")
        if kind not in _FOLDERS or not filename or ".." in filename or filename[0] == "/":
            return web.Response(status=400)
        base = (self.root / kind).resolve()
        folder = (base / subfolder).resolve()
        if os.path.commonpath((folder, base)) != str(base):
            return web.Response(status=403)
        path = folder / filename
        if not path.is_file():
            return web.Response(status=404)
        data = path.read_bytes()
        content_type = _content_type(filename)
        return web.Response(
            body=data,
            content_type=content_type,
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("image")
        if not isinstance(upload, web.FileField):
            return web.Response(status=400)
        kind = str(form.get("type") or "input")
        if kind not in _FOLDERS:
            return web.Response(status=400)
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        base = (self.root / kind).resolve()
        folder = (base / subfolder).resolve()
        if os.path.commonpath((folder, base)) != str(base):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        data = upload.file.read()
        name = os.path.basename(upload.filename or "image.png")
        stem, ext = os.path.splitext(name)
        candidate, index = name, 1
        while (folder / candidate).exists() and not overwrite:
            if (folder / candidate).read_bytes() == data:
                break  # an identical re-upload: the same name
            candidate = f"{stem} ({index}){ext}"
            index += 1
        (folder / candidate).write_bytes(data)
        return web.json_response({"name": candidate, "subfolder": subfolder, "type": kind})

    # --- execution ---

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._pending.sort(key=lambda p: p.number)
            prompt = self._pending.pop(0)
            self._running, self._interrupt = prompt, False
            try:
                await self._execute(prompt)
            except _Crashed:
                self._worker = None
                await self.crash()
                return
            finally:
                self._running, self._current_node = None, None
            await self._broadcast_status()
            await self._send_exec(
                "executing", {"node": None, "prompt_id": prompt.prompt_id}, prompt
            )
            await self._notify()

    async def _execute(self, prompt: _Prompt) -> None:
        pid = prompt.prompt_id
        messages: list[list[Any]] = []
        executed: list[str] = []  # the nodes run so far

        async def exec_event(kind: str, data: Json) -> None:
            data = {**data, "prompt_id": pid, "timestamp": int(time.time() * 1000)}
            if kind.startswith("execution_"):
                messages.append([kind, data])
            await self._send_exec(kind, data, prompt)

        async def interrupted(nid: str, class_type: str) -> None:
            data = {"node_id": nid, "node_type": class_type, "executed": executed}
            await exec_event("execution_interrupted", data)
            self._save_history(prompt, {}, "error", messages)

        await exec_event("execution_start", {})
        order = _execution_order(prompt.graph, prompt.outputs)
        signatures = {nid: _signature(prompt.graph, nid) for nid in order}
        cached = [nid for nid in order if signatures[nid] in self._cache]
        await exec_event("execution_cached", {"nodes": cached})
        values: dict[str, list[Any]] = {}
        ui_outputs: Json = {}
        for nid in order:
            hit = self._cache.get(signatures[nid])
            if hit is None:  # not cached: run it
                node = prompt.graph[nid]
                class_type = node["class_type"]
                if self._interrupt:
                    await interrupted(nid, class_type)
                    return
                if self.crash_on.get(class_type):
                    raise _Crashed
                self._current_node = nid
                await self._notify()
                await self._send_exec(
                    "executing", {"node": nid, "display_node": nid, "prompt_id": pid}, prompt
                )
                await self._progress_state(prompt, nid, "running", 0, 1)
                try:
                    hit = await self._run_node(prompt, nid, class_type, node, values)
                except _Interrupted:
                    await interrupted(nid, class_type)
                    return
                except NodeFailure as exc:
                    await exec_event(
                        "execution_error",
                        {
                            "node_id": nid,
                            "node_type": class_type,
                            "executed": executed,
                            "exception_message": str(exc),
                            "exception_type": "Exception",
                            "traceback": [
                                f'  File "nodes.py", line 1, in {class_type}\n',
                                f"Exception: {exc}\n",
                            ],
                            "current_inputs": {},
                            "current_outputs": {},
                        },
                    )
                    self._save_history(prompt, ui_outputs, "error", messages)
                    return
                self.executed_nodes.append((pid, nid))
                executed.append(nid)
                self._cache[signatures[nid]] = hit
                await self._progress_state(prompt, nid, "finished", 1, 1)
            values[nid], ui = hit
            if ui is not None:
                ui_outputs[nid] = ui
                await self._send_exec(
                    "executed",
                    {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid},
                    prompt,
                )
        await exec_event("execution_success", {})
        if self.history_lag_s:
            await asyncio.sleep(self.history_lag_s)
        self._save_history(prompt, ui_outputs, "success", messages)

    def _save_history(
        self, prompt: _Prompt, outputs: Json, status: str, messages: list[list[Any]]
    ) -> None:
        self._history[prompt.prompt_id] = {
            "prompt": prompt.entry(),
            "outputs": outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in outputs
            },
        }

    async def _progress_state(
        self, prompt: _Prompt, nid: str, state: str, value: float, maximum: float
    ) -> None:
        node = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": nid,
            "prompt_id": prompt.prompt_id,
            "display_node_id": nid,
            "parent_node_id": None,
            "real_node_id": nid,
        }
        await self._send(
            "progress_state",
            {"prompt_id": prompt.prompt_id, "nodes": {nid: node}},
            prompt.client_id,
        )

    async def _run_node(
        self, prompt: _Prompt, nid: str, class_type: str, node: Json, values: dict[str, list[Any]]
    ) -> tuple[list[Any], Json | None]:
        delay = self.delays.get(class_type, 0.0)
        steps = self.steps.get(class_type, 0)
        if steps:
            for step in range(1, steps + 1):
                await asyncio.sleep(delay / steps)
                if self._interrupt:
                    raise _Interrupted
                await self._send(
                    "progress",
                    {"value": step, "max": steps, "prompt_id": prompt.prompt_id, "node": nid},
                    prompt.client_id,
                )
                await self._send_preview(prompt, nid, _tiny_jpeg(step))
        elif delay:
            await asyncio.sleep(delay)
        if class_type in self.texts:
            text = self.texts[class_type].encode()
            node_bytes = nid.encode()
            frame = struct.pack(">II", 3, len(node_bytes)) + node_bytes + text
            for sock in list(self._sockets.values()):
                with contextlib.suppress(Exception):
                    await sock.ws.send_bytes(frame)
        if class_type in self.failures:
            raise NodeFailure(self.failures[class_type])
        inputs = {
            k: (values[v[0]][v[1]] if isinstance(v, list) else v)
            for k, v in (node.get("inputs") or {}).items()
        }
        return await asyncio.to_thread(self._operate, class_type, inputs)

    def _operate(self, class_type: str, inputs: Json) -> tuple[list[Any], Json | None]:
        if class_type == "EmptyImage":
            color = int(inputs["color"])
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
            size = (int(inputs["width"]), int(inputs["height"]))
            return [[Image.new("RGB", size, rgb) for _ in range(int(inputs["batch_size"]))]], None
        if class_type == "ImageInvert":
            return [[ImageOps.invert(image) for image in inputs["image"]]], None
        if class_type == "ImageScale":
            method = {
                "nearest-exact": Image.Resampling.NEAREST,
                "bilinear": Image.Resampling.BILINEAR,
                "area": Image.Resampling.BOX,
                "bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS,
            }[inputs["upscale_method"]]
            out = []
            for image in inputs["image"]:
                width = int(inputs["width"]) or image.width * int(inputs["height"]) // image.height
                height = int(inputs["height"]) or image.height * width // image.width
                out.append(image.resize((width, height), method))
            return [out], None
        if class_type == "LoadImage":
            with Image.open(self._input_file(inputs["image"])) as loaded:
                picture = loaded.convert("RGB")
            return [[picture], [Image.new("L", picture.size, 0)]], None
        if class_type in ("SaveImage", "PreviewImage"):
            kind = "output" if class_type == "SaveImage" else "temp"
            prefix = inputs.get("filename_prefix", "ComfyUI")
            if kind == "temp":
                prefix = "ComfyUI_temp_" + uuid.uuid4().hex[:5]
            items = [self._save(image, kind, prefix) for image in inputs["images"]]
            return [], {"images": items}
        if class_type == "SaveAnimatedWEBP":
            images = inputs["images"]
            path, item = self._new_file("output", inputs["filename_prefix"], ".webp")
            images[0].save(
                path,
                format="WEBP",
                save_all=True,
                append_images=images[1:],
                duration=int(1000 / float(inputs["fps"])),
                lossless=True,
            )
            return [], {"images": [item], "animated": [True]}
        if class_type == "EmptyLatentImage":
            shape = (
                int(inputs["batch_size"]),
                4,
                int(inputs["height"]) // 8,
                int(inputs["width"]) // 8,
            )
            return [{"samples_shape": shape}], None
        if class_type == "SaveLatent":
            path, item = self._new_file("output", inputs["filename_prefix"], ".latent")
            path.write_bytes(_fake_safetensors(inputs["samples"]["samples_shape"]))
            return [], {"latents": [item]}
        raise NodeFailure(f"no implementation for {class_type}")

    def _new_file(self, kind: str, prefix: str, ext: str) -> tuple[Path, Json]:
        """The next free numbered path for ``prefix`` (``ComfyUI_00001_.png``), and the
        file's entry in a node's UI output."""
        subfolder, _, stem = prefix.rpartition("/")
        folder = self.root / kind / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_")
        counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
        name = f"{stem}_{max(counters, default=0) + 1:05}_{ext}"
        return folder / name, {"filename": name, "subfolder": subfolder, "type": kind}

    def _save(self, image: Image.Image, kind: str, prefix: str) -> Json:
        path, item = self._new_file(kind, prefix, ".png")
        image.save(path, format="PNG", compress_level=1 if kind == "temp" else 4)
        return item


# --- pure helpers ------------------------------------------------------------------------


def _error(kind: str, message: str, details: str) -> Json:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _refuse(kind: str, message: str, details: str) -> web.Response:
    return web.json_response(
        {"error": _error(kind, message, details), "node_errors": {}}, status=400
    )


def _execution_order(graph: Json, outputs: list[str]) -> list[str]:
    """Each output's ancestors depth first, then the output: a topological order."""
    order: list[str] = []

    def visit(nid: str) -> None:
        if nid in order:
            return
        for value in (graph[nid].get("inputs") or {}).values():
            if isinstance(value, list):
                visit(value[0])
        order.append(nid)

    for output in sorted(outputs, key=lambda n: (len(n), n)):
        visit(output)
    return order


def _signature(graph: Json, nid: str) -> str:
    """What makes a node's result reusable: its type, its values and its inputs' signatures."""
    node = graph[nid]
    parts: dict[str, Any] = {"class_type": node["class_type"]}
    for key, value in sorted((node.get("inputs") or {}).items()):
        parts[key] = (
            _signature(graph, value[0]) + f"#{value[1]}" if isinstance(value, list) else value
        )
    if _NODES[node["class_type"]].output_node:
        parts["__output__"] = nid  # output nodes are keyed per node
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tiny_jpeg(step: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (step * 20 % 256, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _fake_safetensors(shape: tuple[int, ...]) -> bytes:
    count = 1
    for dim in shape:
        count *= dim
    header = json.dumps(
        {"latent_tensor": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 4 * count]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes(4 * count)


def _content_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower()
    return {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "webp": "image/webp",
        "gif": "image/gif",
        "webm": "video/webm",
        "mp4": "video/mp4",
    }.get(ext, "application/octet-stream")


# --- fixture and CLI ---------------------------------------------------------------------


@pytest.fixture
async def fake_comfyui(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    """A running fake ComfyUI on a random loopback port, stopped after the test."""
    fake = FakeComfyUI(tmp_path / "comfyui")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _serve(root: Path, port: int) -> None:
    fake = FakeComfyUI(root, port=port)
    await fake.start()
    print(f"fake ComfyUI listening on {fake.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake ComfyUI with model-free nodes")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--root", type=Path, default=Path(".pixelbus/fake-comfyui"))
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.root, args.port))


if __name__ == "__main__":
    main()
