"""Checks and rewrites of ComfyUI API-format graphs (pure: no I/O).

A graph is ``{"<node id>": {"class_type": str, "inputs": {name: value | [node id, slot]}}}``.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pixelbus.comfy_worker.errors import WorkflowError
from pixelbus.contracts.subjects import INPUT_OBJECT_PREFIX
from pixelbus.media.errors import InvalidFileName
from pixelbus.media.file_names import check_relative_path

__all__ = [
    "ImageInput",
    "check_graph",
    "check_node_types",
    "image_inputs",
    "is_remote_image",
    "with_inputs",
]

Graph = dict[str, dict[str, Any]]

#: Node types that read an image from the server's input folder, and their input.
IMAGE_LOADERS: Mapping[str, str] = {"LoadImage": "image", "LoadImageMask": "image"}
_REMOTE_PREFIXES = ("http://", "https://", "data:", INPUT_OBJECT_PREFIX)
MAX_NODES = 5000


def is_remote_image(value: Any) -> bool:
    """A URL, data: URI or uploaded object: fetched and uploaded by the worker."""
    return isinstance(value, str) and value[:16].lower().startswith(_REMOTE_PREFIXES)


@dataclass(frozen=True, slots=True)
class ImageInput:
    node_id: str
    input: str
    value: str

    @property
    def is_remote(self) -> bool:
        return is_remote_image(self.value)


def check_graph(graph: Any) -> dict[str, str]:
    """The node types by node id; ``WorkflowError`` naming the first malformed node."""
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(
            "wf_json must be a ComfyUI API-format graph: an object of nodes "
            '{"<id>": {"class_type": …, "inputs": {…}}} (use "Export (API)" in ComfyUI)'
        )
    if len(graph) > MAX_NODES:
        raise WorkflowError(f"the graph has {len(graph)} nodes, more than {MAX_NODES}")
    types: dict[str, str] = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            raise WorkflowError(f"node {node_id} is not an object", node_id=str(node_id))
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowError(f"node {node_id} has no class_type", node_id=str(node_id))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"node {node_id}: inputs must be an object", node_id=str(node_id))
        for name, value in inputs.items():
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if linked and value[0] not in graph:
                raise WorkflowError(
                    f"node {node_id} ({class_type}): input {name!r} links to node "
                    f"{value[0]}, which is not in the graph",
                    node_id=str(node_id),
                )
        types[str(node_id)] = class_type
    return types


def check_node_types(types: Mapping[str, str], allowed: Collection[str] | None) -> None:
    """Refuse node types outside ``allowed`` (``None``: any type)."""
    if allowed is None:
        return
    refused = sorted({(t, n) for n, t in types.items() if t not in allowed})
    if refused:
        listed = ", ".join(f"{t} (node {n})" for t, n in refused[:10])
        raise WorkflowError(
            f"node types not allowed on this platform: {listed}",
            code="node_type_not_allowed",
            node_id=refused[0][1],
        )


def image_inputs(graph: Graph, allowed_files: Collection[str] = ()) -> list[ImageInput]:
    """The image-loading inputs of the graph that the worker must provide.

    Values that are URLs, data: URIs or uploaded objects are returned (to be fetched and
    uploaded). A plain file name would read a file already on the server: refused unless
    it matches a pattern of ``allowed_files`` (then left as it is).
    """
    found: list[ImageInput] = []
    for node_id, node in graph.items():
        name = IMAGE_LOADERS.get(node["class_type"])
        if name is None:
            continue
        value = (node.get("inputs") or {}).get(name)
        if isinstance(value, list):
            continue  # linked from another node
        if not isinstance(value, str) or not value:
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}): input {name!r} must be an image URL "
                "or data: URI",
                node_id=node_id,
            )
        item = ImageInput(node_id, name, value.strip())
        if item.is_remote:
            found.append(item)
            continue
        try:  # before matching: fnmatch's '*' would also match '../'
            check_relative_path(item.value, what="file name")
        except InvalidFileName as exc:
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}): {exc}",
                code="input_file_not_allowed",
                node_id=node_id,
            ) from None
        if not any(fnmatch.fnmatchcase(item.value, p) for p in allowed_files):
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}) names a file on the ComfyUI server "
                f"({item.value[:100]!r}); give the image as an http(s) URL or a data: URI "
                "(files on the server are allowed only by PIXELBUS_COMFY_ALLOWED_INPUT_FILES)",
                code="input_file_not_allowed",
                node_id=node_id,
            )
    return found


def with_inputs(graph: Graph, values: Mapping[tuple[str, str], Any]) -> Graph:
    """A copy of ``graph`` with ``values[(node id, input)]`` put in."""
    copied = copy.deepcopy(graph)
    for (node_id, name), value in values.items():
        copied[node_id].setdefault("inputs", {})[name] = value
    return copied
