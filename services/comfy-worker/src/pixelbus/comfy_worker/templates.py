"""Stored workflows: named graph templates with a small typed parameter schema.

A template is a JSON file ``<name>.json`` in a templates directory::

    {
      "description": "…",
      "timeout_s": 120,                       # optional: overrides the worker's default
      "node_types": ["EmptyImage", "SaveImage"],   # every type the graph may use
      "params": {
        "prompt": {"type": "str", "to": ["6.text"], "max_length": 2000},
        "seed":   {"type": "int", "default": "random", "to": ["3.seed"]},
        "image":  {"type": "image-url", "to": ["10.image"]}
      },
      "graph": { … API-format graph … }
    }

Types: ``str``, ``int``, ``float``, ``bool``, ``image-url`` (an http(s) URL or data: URI,
fetched and uploaded like any image input), with optional ``default`` (``"random"`` for
an int: a fresh 32-bit value per task), ``min``/``max``, ``choices``, ``max_length``.
A parameter without a default is required. ``to`` lists the ``"<node id>.<input>"``
places it fills. Loading checks everything, so a bad template stops the worker at start.
Filling is pure; the random source is passed in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pixelbus.comfy_worker.errors import WorkflowError
from pixelbus.comfy_worker.graph import check_graph, check_node_types, is_remote_image, with_inputs

__all__ = ["Param", "Template", "TemplateError", "builtin_templates", "load_templates"]

PARAM_TYPES = ("str", "int", "float", "bool", "image-url")
_MISSING = object()


class TemplateError(ValueError):
    """A template file is invalid (names the file and the problem)."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    targets: tuple[tuple[str, str], ...]
    default: Any = _MISSING
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int = 10_000

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def value(self, given: Any, rng: random.Random) -> Any:
        """The checked value for ``given`` (``_MISSING``: the default); ``ValueError``."""
        if given is _MISSING or given is None:
            if self.required:
                raise ValueError("required")
            if self.default == "random" and self.type == "int":
                return rng.randrange(0, 2**32)
            return self.default
        return self._check(given)

    def _check(self, value: Any) -> Any:
        if self.type == "str":
            if not isinstance(value, str):
                raise ValueError("must be a string")
            if len(value) > self.max_length:
                raise ValueError(f"longer than {self.max_length} characters")
        elif self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("must be an integer")
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("must be a number")
            value = float(value)
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
        elif self.type == "image-url" and not is_remote_image(value):
            raise ValueError("must be an http(s) URL or a data: URI")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        return value


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    graph: dict[str, dict[str, Any]]
    params: Mapping[str, Param]
    node_types: frozenset[str]
    timeout_s: float | None = None

    def fill(self, given: Any, rng: random.Random) -> dict[str, dict[str, Any]]:
        """The graph with the parameters put in; ``WorkflowError`` naming every bad one."""
        if not isinstance(given, dict):
            raise WorkflowError(
                f"workflow {self.name!r} takes its parameters as an object in wf_json",
                code="invalid_params",
            )
        problems = [f"unknown parameter {k!r}" for k in sorted(given) if k not in self.params]
        values: dict[tuple[str, str], Any] = {}
        for name, param in self.params.items():
            try:
                value = param.value(given.get(name, _MISSING), rng)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
                continue
            for target in param.targets:
                values[target] = value
        if problems:
            known = ", ".join(
                f"{p.name}: {p.type}{'' if p.required else ' (optional)'}"
                for p in self.params.values()
            )
            raise WorkflowError(
                f"workflow {self.name!r}: {'; '.join(problems)} (parameters: {known})",
                code="invalid_params",
            )
        return with_inputs(self.graph, values)


def parse_template(name: str, body: Any) -> Template:
    """One template from its JSON body; ``TemplateError`` saying what is wrong."""
    where = f"template {name!r}"
    if not isinstance(body, dict):
        raise TemplateError(f"{where}: must be a JSON object")
    try:
        types = check_graph(body.get("graph"))
    except WorkflowError as exc:
        raise TemplateError(f"{where}: graph: {exc}") from None
    node_types = body.get("node_types")
    if not isinstance(node_types, list) or not all(isinstance(t, str) for t in node_types):
        raise TemplateError(f"{where}: node_types must list the node types the graph uses")
    try:
        check_node_types(types, frozenset(node_types))
    except WorkflowError as exc:
        raise TemplateError(f"{where}: {exc} (not in its node_types)") from None
    raw_params = body.get("params", {})
    if not isinstance(raw_params, dict):
        raise TemplateError(f"{where}: params must be an object")
    params = {key: _parse_param(where, key, spec, types) for key, spec in raw_params.items()}
    timeout = body.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise TemplateError(f"{where}: timeout_s must be a positive number")
    return Template(
        name=name,
        description=str(body.get("description") or ""),
        graph=body["graph"],
        params=params,
        node_types=frozenset(node_types),
        timeout_s=float(timeout) if timeout is not None else None,
    )


def _parse_param(where: str, key: str, spec: Any, types: Mapping[str, str]) -> Param:
    label = f"{where}: parameter {key!r}"
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise TemplateError(f"{label}: type must be one of {', '.join(PARAM_TYPES)}")
    targets: list[tuple[str, str]] = []
    for target in spec.get("to") or []:
        node_id, dot, input_name = str(target).partition(".")
        if not dot or node_id not in types or not input_name:
            raise TemplateError(f"{label}: target {target!r} is not '<node id>.<input>' of a node")
        targets.append((node_id, input_name))
    if not targets:
        raise TemplateError(f"{label}: 'to' must name at least one '<node id>.<input>'")
    choices = spec.get("choices")
    param = Param(
        name=key,
        type=spec["type"],
        targets=tuple(targets),
        default=spec.get("default", _MISSING),
        minimum=spec.get("min"),
        maximum=spec.get("max"),
        choices=tuple(choices) if isinstance(choices, list) else None,
        max_length=int(spec.get("max_length", 10_000)),
    )
    if not param.required and not (param.default == "random" and param.type == "int"):
        try:
            param._check(param.default)
        except ValueError as exc:
            raise TemplateError(f"{label}: default {param.default!r} {exc}") from None
    return param


def builtin_templates() -> dict[str, Template]:
    """The templates shipped with the worker (``pixelbus.comfy_worker/templates``)."""
    found: dict[str, Template] = {}
    for entry in resources.files("pixelbus.comfy_worker").joinpath("templates").iterdir():
        if entry.name.endswith(".json"):
            name = entry.name.removesuffix(".json")
            found[name] = _parse_file(name, entry.read_text(encoding="utf-8"))
    return found


def load_templates(directory: Path | None) -> dict[str, Template]:
    """The built-in templates, then those of ``directory`` (same name: the directory's)."""
    templates = builtin_templates()
    if directory is None:
        return templates
    if not directory.is_dir():
        raise TemplateError(f"templates directory {str(directory)!r} does not exist")
    for path in sorted(directory.glob("*.json")):
        templates[path.stem] = _parse_file(path.stem, path.read_text(encoding="utf-8"))
    return templates


def _parse_file(name: str, text: str) -> Template:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise TemplateError(f"template {name!r}: invalid JSON: {exc}") from None
    return parse_template(name, body)
