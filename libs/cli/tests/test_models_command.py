"""``pixelbus models list`` / ``pull`` end to end: the real parser, a local HTTP server
of stand-in model files, a temporary models directory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pixelbus.cli.app import build_parser, main
from pixelbus.faceswap_worker.testing.standins import (
    DetectorPhoto,
    build_detector,
    build_recogniser,
    build_swapper,
    file_pin,
)
from pixelbus.testkit.model_server import ModelServer, model_server

SERVER_FIXTURES = frozenset({"server"})  # the model server: the test kit marks the tests `servers`


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("served")
    blank = np.zeros((64, 64, 3), np.uint8)
    build_detector(directory / "det_10g.onnx", [DetectorPhoto(blank, [])], input_size=(64, 64))
    build_recogniser(directory / "w600k_r50.onnx")
    build_swapper(directory / "inswapper_128_fp16.onnx", fp16=True)
    pins = {p.stem: file_pin(p) for p in directory.glob("*.onnx")}
    (directory / "manifest.json").write_text(json.dumps({"models": pins}))
    return directory


@pytest.fixture
def server(built: Path) -> Iterator[ModelServer]:
    files = {f"models/{p.name}": p.read_bytes() for p in built.glob("*.onnx")}
    with model_server(files) as running:
        yield running


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built: Path, server: ModelServer) -> Path:
    target = tmp_path / "models"
    monkeypatch.setenv("PIXELBUS_MODELS_DIR", str(target))
    monkeypatch.setenv("PIXELBUS_MODELS_MANIFEST", str(built / "manifest.json"))
    monkeypatch.setenv("PIXELBUS_MODELS_BASE_URL", server.url)
    return target


def test_pull_brings_the_swapper_and_what_it_needs_then_list_shows_them(
    env: Path, server: ModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", "inswapper_128_fp16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "det_10g:" in out and "w600k_r50:" in out and "inswapper_128_fp16:" in out
    assert sorted(p.name for p in env.glob("*.onnx")) == [
        "det_10g.onnx",
        "inswapper_128_fp16.onnx",
        "w600k_r50.onnx",
    ]
    assert main(["models", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " verified " in rows["inswapper_128_fp16"]
    assert " missing " in rows["inswapper_128"]
    assert "non-commercial" in rows["inswapper_128"]


def test_a_corrupted_file_is_refused_with_exit_status_1(
    env: Path, server: ModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["models/w600k_r50.onnx"] = server.files["models/w600k_r50.onnx"][::-1]
    assert main(["models", "pull", "w600k_r50", "--no-progress"]) == 1
    assert "refused" in capsys.readouterr().err
    assert not (env / "w600k_r50.onnx").exists()


def test_unknown_model_and_missing_base_url(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", "nope", "--no-progress"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    monkeypatch.delenv("PIXELBUS_MODELS_BASE_URL")
    assert main(["models", "pull", "w600k_r50"]) == 1
    assert "PIXELBUS_MODELS_BASE_URL" in capsys.readouterr().err


def test_the_dispatcher_lists_its_commands() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    args = parser.parse_args(["models", "pull", "a", "b", "--force"])
    assert args.names == ["a", "b"] and args.force and callable(args.run)


@pytest.mark.servers  # a child process
def test_the_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pixelbus")
    done = subprocess.run(
        [str(script), "models", "list", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "inswapper_128_fp16" in done.stdout and "missing" in done.stdout
