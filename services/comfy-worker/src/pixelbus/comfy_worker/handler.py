"""The comfy task handler: build the graph, provide its images, run it, collect outputs.

1. The graph: a template named by ``workflow`` filled with ``wf_json``'s parameters, or
   the raw graph in ``wf_json`` (when raw graphs are allowed, and only with allowed node
   types). Everything is checked before any ComfyUI server is asked.
2. Images given to ``LoadImage`` as URLs, data: URIs or uploaded objects are fetched
   through the SSRF guard, checked, uploaded to the chosen server (``/upload/image``) and
   the graph is rewritten to the uploaded names.
3. The prompt runs on a healthy backend (``execution.run_prompt``), its progress relayed
   once the task has run for ``progress_delay_s`` (``relay.ProgressRelay``).
4. Every file of every output node is read with ``/view`` (``PreviewImage``'s temp files
   only when ``include_previews``), with its node id and content type: each as soon as its
   node's ``executed`` message names it, the ``/history`` entry deciding what is kept
   (``outputs.OutputReader``).

Errors: our ``ComfyError``s become ``Permanent`` or ``Retryable`` with their code; an
unreachable backend is also taken out of routing at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import structlog
from nats.js.errors import NotFoundError
from PIL import Image, UnidentifiedImageError

from pixelbus.comfy_worker.backends import Backend, BackendPool
from pixelbus.comfy_worker.errors import BackendUnavailable, WorkflowError
from pixelbus.comfy_worker.execution import RunLimits, run_prompt
from pixelbus.comfy_worker.graph import ImageInput, check_graph, check_node_types, image_inputs
from pixelbus.comfy_worker.graph import with_inputs as graph_with_inputs
from pixelbus.comfy_worker.outputs import OutputReader
from pixelbus.comfy_worker.progress import ProgressTracker, Snapshot
from pixelbus.comfy_worker.protocol import HistoryEntry
from pixelbus.comfy_worker.relay import ProgressRelay
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import Template
from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX
from pixelbus.media.errors import MediaError
from pixelbus.media.fetch import FetchLimits, fetch_bytes
from pixelbus.media.images import open_image
from pixelbus.media.ssrf import SsrfPolicy
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.worker import OutputFile, TaskContext, TaskResult

__all__ = ["ComfyHandler", "PreparedGraph", "unique_names"]

log = structlog.get_logger("pixelbus.comfy_worker")

UPLOAD_SUBFOLDER = "pixelbus"
_IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


@dataclass(frozen=True, slots=True)
class PreparedGraph:
    graph: dict[str, dict[str, Any]]
    types: dict[str, str]
    images: list[ImageInput]
    timeout_s: float
    template: str | None


class ComfyHandler:
    def __init__(
        self,
        settings: ComfySettings,
        pool: BackendPool,
        templates: Mapping[str, Template],
        objects: ObjectReader | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._templates = templates
        self._objects = objects
        self._http = http
        self._rng = rng or random.SystemRandom()
        self._limits = FetchLimits(
            max_bytes=settings.max_image_bytes, timeout_s=settings.fetch_timeout_s
        )
        self._policy = SsrfPolicy(allow_networks=settings.ssrf_allow_networks)
        self._run_limits = RunLimits(
            reconnect_s=settings.reconnect_s, poll_interval_s=settings.poll_interval_s
        )

    async def __call__(self, ctx: TaskContext) -> TaskResult:
        prepared = self.prepare(ctx.workflow, ctx.input_data)
        include_previews = bool(
            ctx.input_data.get("include_previews", self._settings.include_previews)
        )
        relay = ProgressRelay(ctx.progress, self._settings.progress_delay_s)
        try:
            if prepared.images:
                await relay.report(0.0, message=f"fetching {len(prepared.images)} input image(s)")
            fetched = await asyncio.gather(
                *(self._fetch(item, ctx.task_id) for item in prepared.images)
            )
            prompt_id = str(uuid.uuid4())
            async with self._pool.acquire(timeout=self._settings.reconnect_s) as backend:
                try:
                    result = await self._run(
                        backend, prepared, fetched, prompt_id, include_previews, relay
                    )
                except BackendUnavailable as exc:
                    self._pool.mark_down(backend, exc.message)
                    raise
        except BaseException:
            relay.cancel()
            raise
        await relay.close()
        return result

    # --- 1. the graph (pure) ---

    def prepare(self, workflow: str, input_data: Mapping[str, Any]) -> PreparedGraph:
        """The graph to run for a task; ``WorkflowError`` before anything is sent."""
        wf_json = input_data.get("wf_json")
        template = self._templates.get(workflow)
        allowed: Collection[str] | None
        if template is not None:
            graph = template.fill(wf_json if wf_json is not None else {}, self._rng)
            allowed = template.node_types
            timeout = template.timeout_s or self._settings.task_timeout_s
        else:
            if not self._settings.raw_graphs:
                raise WorkflowError(
                    f"workflow {workflow!r} is not a stored workflow (known: "
                    f"{', '.join(sorted(self._templates)) or 'none'}) and raw graphs are "
                    "not accepted here",
                    code="unknown_workflow",
                )
            graph = _unwrap(wf_json)
            allowed = self._settings.allowed_node_types
            timeout = self._settings.task_timeout_s
        types = check_graph(graph)
        check_node_types(types, allowed)
        asked = input_data.get("timeout_s")
        if asked is not None:
            if isinstance(asked, bool) or not isinstance(asked, int | float) or asked <= 0:
                raise WorkflowError("timeout_s must be a positive number of seconds")
            timeout = min(float(asked), timeout)
        images = image_inputs(graph, self._settings.allowed_input_files)
        return PreparedGraph(graph, types, images, timeout, template.name if template else None)

    async def _run(
        self,
        backend: Backend,
        prepared: PreparedGraph,
        fetched: list[tuple[bytes, str]],
        prompt_id: str,
        include_previews: bool,
        relay: ProgressRelay,
    ) -> TaskResult:
        names = await asyncio.gather(
            *(
                backend.client.upload_image(data, name, subfolder=UPLOAD_SUBFOLDER)
                for data, name in fetched
            )
        )
        graph = graph_with_inputs(
            prepared.graph,
            {
                (item.node_id, item.input): name
                for item, name in zip(prepared.images, names, strict=True)
            },
        )
        tracker = ProgressTracker(prepared.types)

        async def report(snapshot: Snapshot) -> None:
            await relay.report(snapshot.fraction, node=snapshot.node, message=snapshot.message)

        await relay.report(0.0, message=f"queued on {backend.url}")
        reader = OutputReader(
            backend.client,
            max_bytes=self._settings.max_output_bytes,
            include_previews=include_previews,
        )
        try:
            try:
                async with asyncio.timeout(prepared.timeout_s):
                    entry = await run_prompt(
                        backend,
                        graph,
                        prompt_id,
                        tracker,
                        report,
                        self._run_limits,
                        on_output=reader.prefetch,
                    )
            except TimeoutError:
                raise WorkflowError(
                    f"the workflow ran longer than its {prepared.timeout_s:g} s limit and was "
                    "stopped on the ComfyUI server",
                    code="comfy_timeout",
                ) from None
            outputs, summary = await self._collect(reader, entry)
        finally:
            await reader.close()
        return TaskResult(
            outputs=outputs,
            result={
                "prompt_id": prompt_id,
                "backend": backend.url,
                "template": prepared.template,
                **summary,
            },
        )

    # --- 2. inputs ---

    async def _fetch(self, item: ImageInput, task_id: str) -> tuple[bytes, str]:
        """The image's bytes and a content-addressed upload name."""
        label = f"node {item.node_id} input {item.input!r}"
        if item.value.startswith(INPUT_OBJECT_PREFIX):
            # Only this task's own inputs (the gateway stores them under inputs/<task id>/):
            # a graph is free-form, and must not read another task's images or outputs.
            name = item.value.removeprefix(INPUT_OBJECT_PREFIX)
            if not name.startswith(f"inputs/{task_id}/") or ".." in name:
                raise WorkflowError(
                    f"{label}: {INPUT_OBJECT_PREFIX} names only this task's own inputs",
                    code="input_not_allowed",
                )
            if self._objects is None:
                raise WorkflowError(f"{label}: uploaded objects cannot be read in agent mode")
            try:
                data = await self._objects.read(name)
            except NotFoundError as exc:
                raise WorkflowError(
                    f"{label}: the uploaded image has expired", code="input_missing"
                ) from exc
        else:
            try:
                fetched = await fetch_bytes(
                    item.value, limits=self._limits, policy=self._policy, client=self._http
                )
            except MediaError as exc:
                exc.about(label)
                raise
            data = fetched.data
        extension = await asyncio.to_thread(self._image_extension, data, label)
        return data, f"{hashlib.sha256(data).hexdigest()[:24]}{extension}"

    def _image_extension(self, data: bytes, label: str) -> str:
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise WorkflowError(f"{label}: not an image", code="invalid_image") from exc
        if kind not in _IMAGE_FORMATS:
            raise WorkflowError(
                f"{label}: {kind or 'unknown'} images are not accepted", code="invalid_image"
            )
        if width * height > self._settings.max_image_pixels:
            raise WorkflowError(
                f"{label}: {width}x{height} is more than {self._settings.max_image_pixels} pixels",
                code="invalid_image",
            )
        try:  # a full, bounded decode: bombs and truncations stop here, not in ComfyUI
            open_image(
                data,
                max_bytes=self._settings.max_image_bytes,
                max_pixels=self._settings.max_image_pixels,
                animated=self._settings.animated_inputs,
            )
        except MediaError as exc:
            raise WorkflowError(f"{label}: {exc}", code=exc.code) from exc
        return _IMAGE_FORMATS[kind]

    # --- 4. outputs ---

    async def _collect(
        self, reader: OutputReader, entry: HistoryEntry
    ) -> tuple[list[OutputFile], dict[str, Any]]:
        wanted = [ref for ref in entry.files if reader.wanted(ref)]
        skipped = [ref for ref in entry.files if ref not in wanted]
        names = unique_names([ref.filename for ref in wanted])
        contents = await reader.read(wanted)
        files = [
            OutputFile(name, data, ref.content_type, node_id=ref.node_id)
            for ref, name, data in zip(wanted, names, contents, strict=True)
        ]
        for node_id, kinds in entry.values.items():
            for kind, items in kinds.items():
                texts = [item for item in items if isinstance(item, str)]
                for index, text in enumerate(texts):
                    files.append(
                        OutputFile(
                            f"node{node_id}-{kind}-{index}.txt",
                            text.encode(),
                            "text/plain; charset=utf-8",
                            node_id=node_id,
                        )
                    )
        if not files:
            hint = (
                f" ({len(skipped)} preview image(s) were left out: set include_previews "
                "or save them with SaveImage)"
                if skipped
                else ""
            )
            raise WorkflowError(
                f"the workflow ran but its output nodes wrote no files{hint}", code="no_outputs"
            )
        summary = {  # not "outputs": the task view puts the stored outputs there
            "files": [{**asdict(ref), "content_type": ref.content_type} for ref in wanted],
            "values": entry.values,
            "skipped_previews": len(skipped),
        }
        return files, summary


def _unwrap(wf_json: Any) -> Any:
    """The graph; also accepted: ``/prompt``'s own body shape ``{"prompt": graph, …}``."""
    if (
        isinstance(wf_json, dict)
        and isinstance(wf_json.get("prompt"), dict)
        and set(wf_json) <= {"prompt", "client_id", "extra_data", "prompt_id"}
    ):
        return wf_json["prompt"]
    return wf_json


def unique_names(names: list[str]) -> list[str]:
    """The file names, a repeated one (two savers, two subfolders) made unique with
    ``-2``, ``-3``… before its extension, so that no output overwrites another in storage."""
    seen: set[str] = set()
    unique: list[str] = []
    for name in names:
        candidate, index = name, 1
        stem, dot, extension = name.rpartition(".")
        while candidate in seen:
            index += 1
            candidate = f"{stem}-{index}.{extension}" if dot else f"{name}-{index}"
        seen.add(candidate)
        unique.append(candidate)
    return unique
