"""Graph checks, the LoadImage allowlist, templates and settings (pure)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pixelbus.comfy_worker.errors import WorkflowError
from pixelbus.comfy_worker.graph import check_graph, check_node_types, image_inputs, with_inputs
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import (
    TemplateError,
    builtin_templates,
    load_templates,
    parse_template,
)
from pixelbus.runtime.errors import SettingsError


def graph() -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "https://example.com/a.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }


def test_check_graph_gives_types_and_refuses_malformed_graphs() -> None:
    assert check_graph(graph()) == {"1": "LoadImage", "2": "ImageInvert", "3": "SaveImage"}
    for bad, words in [
        ({}, "API-format graph"),
        ([1, 2], "API-format graph"),
        ({"1": "x"}, "node 1 is not an object"),
        ({"1": {"inputs": {}}}, "node 1 has no class_type"),
        ({"1": {"class_type": "A", "inputs": {"x": ["9", 0]}}}, "links to node 9"),
    ]:
        with pytest.raises(WorkflowError, match=words):
            check_graph(bad)


def test_node_type_allowlist_names_the_refused_types_and_nodes() -> None:
    check_node_types(check_graph(graph()), None)
    with pytest.raises(WorkflowError) as refused:
        check_node_types(check_graph(graph()), {"LoadImage", "SaveImage"})
    assert refused.value.code == "node_type_not_allowed"
    assert "ImageInvert (node 2)" in refused.value.message


def test_load_image_urls_are_collected_and_server_files_refused_unless_allowed() -> None:
    [item] = image_inputs(graph())
    assert (item.node_id, item.input, item.is_remote) == ("1", "image", True)
    local = with_inputs(graph(), {("1", "image"): "secret/passwords.png"})
    assert graph()["1"]["inputs"]["image"].startswith("https://")  # a copy, not a change
    with pytest.raises(WorkflowError) as refused:
        image_inputs(local)
    assert refused.value.code == "input_file_not_allowed" and refused.value.node_id == "1"
    assert image_inputs(local, allowed_files=("secret/*.png",)) == []
    data = with_inputs(graph(), {("1", "image"): "data:image/png;base64,AAAA"})
    assert image_inputs(data)[0].is_remote


def test_builtin_templates_load_and_fill_typed_parameters() -> None:
    templates = builtin_templates()
    assert {"blank", "invert", "txt2img"} <= set(templates)
    txt2img = templates["txt2img"]
    filled = txt2img.fill({"prompt": "a red fox", "steps": 4}, random.Random(7))
    assert filled["6"]["inputs"]["text"] == "a red fox"
    assert filled["3"]["inputs"]["steps"] == 4
    seed = filled["3"]["inputs"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert txt2img.fill({"prompt": "x"}, random.Random(8))["3"]["inputs"]["seed"] != seed
    assert txt2img.graph["6"]["inputs"]["text"] == ""  # the template itself is untouched
    with pytest.raises(WorkflowError) as bad:
        txt2img.fill({"steps": "many", "colour": 1}, random.Random(1))
    assert bad.value.code == "invalid_params"
    for words in ("unknown parameter 'colour'", "prompt: required", "steps: must be an integer"):
        assert words in bad.value.message


def test_template_bounds_and_image_urls() -> None:
    blank = builtin_templates()["blank"]
    with pytest.raises(WorkflowError, match="width: must be at most 8192"):
        blank.fill({"width": 10**6}, random.Random(1))
    invert = builtin_templates()["invert"]
    with pytest.raises(WorkflowError, match="image: must be an http"):
        invert.fill({"image": "/etc/passwd"}, random.Random(1))
    assert (
        invert.fill({"image": "https://e.com/x.png"}, random.Random(1))["1"]["inputs"]["image"]
        == "https://e.com/x.png"
    )


def test_invalid_templates_are_refused_with_the_reason(tmp_path: Path) -> None:
    base = json.loads(
        (Path(__file__).parents[1] / "src/pixelbus/comfy_worker/templates/blank.json").read_text()
    )
    undeclared = {**base, "node_types": ["EmptyImage", "SaveImage"]}
    with pytest.raises(TemplateError, match="ImageInvert"):
        parse_template("t", undeclared)
    bad_target = {**base, "params": {"w": {"type": "int", "default": 1, "to": ["9.width"]}}}
    with pytest.raises(TemplateError, match=r"9\.width"):
        parse_template("t", bad_target)
    bad_default = {**base, "params": {"w": {"type": "int", "default": "big", "to": ["1.width"]}}}
    with pytest.raises(TemplateError, match="default 'big' must be an integer"):
        parse_template("t", bad_default)
    (tmp_path / "mine.json").write_text(json.dumps(base))
    (tmp_path / "blank.json").write_text(json.dumps({**base, "description": "overridden"}))
    loaded = load_templates(tmp_path)
    assert "mine" in loaded and loaded["blank"].description == "overridden"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TemplateError, match=r"broken.*invalid JSON"):
        load_templates(tmp_path)


def test_settings_from_env_and_one_line_errors() -> None:
    settings = ComfySettings.from_env(
        {
            "COMFYUI_URL": "http://a:8188, http://b:8188/",
            "PIXELBUS_COMFY_BACKEND_CAPACITY": "3",
            "PIXELBUS_COMFY_ALLOWED_NODE_TYPES": "EmptyImage,SaveImage",
        }
    )
    assert settings.urls == ("http://a:8188", "http://b:8188")
    assert settings.concurrency == 6
    assert settings.allowed_node_types == frozenset({"EmptyImage", "SaveImage"})
    assert settings.agent is None
    assert ComfySettings.from_env({}).urls == ("http://127.0.0.1:8188",)
    for env, words in [
        ({"COMFYUI_URL": "ftp://x"}, "COMFYUI_URL: 'ftp://x' is not an http"),
        ({"COMFYUI_URL": "http://a,http://a"}, "listed twice"),
        (
            {"PIXELBUS_COMFY_TASK_TIMEOUT_S": "0"},
            "PIXELBUS_COMFY_TASK_TIMEOUT_S=0.0 is out of range",
        ),
        ({"PIXELBUS_COMFY_TEMPLATES_DIR": "/nonexistent"}, "not a directory"),
        ({"PIXELBUS_COMFY_AGENT_URL": "gateway"}, "PIXELBUS_COMFY_AGENT_URL"),
    ]:
        with pytest.raises(SettingsError, match=words):
            ComfySettings.from_env(env)
    agent = ComfySettings.from_env({"PIXELBUS_COMFY_AGENT_URL": "http://gw:8000"}).agent
    assert agent is not None and agent.gateway_url == "http://gw:8000"


def test_repeated_output_names_are_made_unique() -> None:
    from pixelbus.comfy_worker.handler import unique_names

    assert unique_names(["a.png", "b.png", "a.png", "a.png", "x", "x"]) == [
        "a.png",
        "b.png",
        "a-2.png",
        "a-3.png",
        "x",
        "x-2",
    ]


def test_main_refuses_a_bad_setting_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pixelbus.comfy_worker.__main__ import main
    from pixelbus.runtime import service

    # logging set up for real would keep this test's captured stream after it is closed
    monkeypatch.setattr(service, "setup_logging", lambda level, fmt: None)
    monkeypatch.setenv("COMFYUI_URL", "http://a:8188,not a url")
    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pixelbus-comfy-worker: COMFYUI_URL: 'not a url' is not an http(s) URL with a host"
    ]
    monkeypatch.setenv("COMFYUI_URL", "http://a:8188")
    (tmp_path / "bad.json").write_text('{"graph": {}}')
    monkeypatch.setenv("PIXELBUS_COMFY_TEMPLATES_DIR", str(tmp_path))
    assert main() == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pixelbus-comfy-worker: template 'bad': graph:")


@pytest.mark.parametrize(
    "name", ["examples/../../etc/passwd", "/etc/passwd", "examples/a\x00.png", "examples//x.png"]
)
def test_an_allowed_file_pattern_never_lets_a_path_escape(name: str) -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": name}}}
    with pytest.raises(WorkflowError) as caught:
        image_inputs(graph, ["examples/*"])
    assert caught.value.code == "input_file_not_allowed"
    assert (
        image_inputs(
            {"1": {"class_type": "LoadImage", "inputs": {"image": "examples/a.png"}}},
            ["examples/*"],
        )
        == []
    )


def test_production_needs_a_node_type_allowlist_for_raw_graphs() -> None:
    with pytest.raises(SettingsError, match="PIXELBUS_COMFY_ALLOWED_NODE_TYPES"):
        ComfySettings.from_env({"APP_ENV": "production", "COMFYUI_URL": "http://comfy:8188"})
    allowed = ComfySettings.from_env(
        {
            "APP_ENV": "production",
            "COMFYUI_URL": "http://comfy:8188",
            "PIXELBUS_COMFY_ALLOWED_NODE_TYPES": "LoadImage,ImageInvert,SaveImage",
        }
    )
    assert allowed.allowed_node_types == {"LoadImage", "ImageInvert", "SaveImage"}
    templates_only = ComfySettings.from_env(
        {
            "APP_ENV": "production",
            "COMFYUI_URL": "http://comfy:8188",
            "PIXELBUS_COMFY_RAW_GRAPHS": "false",
        }
    )
    assert templates_only.raw_graphs is False
