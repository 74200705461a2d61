"""The packages install and run on their own, as an operator installs them.

Every lib and service is built as a wheel (``uv build``) and the wheels are installed with
``constraints.txt`` into a virtualenv of their own (no editable install), which is then run
with its working directory outside the repository and no ``PYTHONPATH``: a file missing from
a wheel (templates, the dashboard, shipped data) or an undeclared dependency fails here,
where the editable installs of the other tests would hide it. The services then run as
processes from their console scripts against a real nats-server and complete a face swap
and a ComfyUI task (fake ComfyUI).

The virtualenv is kept in ``.pixelbus/packaging/`` (git-ignored), keyed by the wheels'
dependencies and entry points and by ``constraints.txt``; the wheels themselves are
reinstalled into it whenever their bytes change.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import httpx
import nats
import pytest
from tools.wheels import CONSTRAINTS, ROOT, build_wheels, digest, requirements_key, tool_env, uv

from pixelbus.testkit.fake_comfyui import FakeComfyUI
from pixelbus.testkit.nats_server import NatsServer, free_port
from tests.deployed import ENTRY_POINTS, processes, run_both_tasks, stack_settings, wait_ready

pytestmark = pytest.mark.e2e

CACHE = ROOT / ".pixelbus" / "packaging"
PACKAGES = sorted(
    p.parent for p in ROOT.glob("*/*/pyproject.toml") if p.parts[-3] in ("libs", "services")
)
#: not installed for the run: the test kit is ours, not the operator's (pytest, moto)
TEST_ONLY = "pixelbus_testkit"


@dataclass(frozen=True)
class Installed:
    venv: Path
    seconds: float
    reused: bool

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, home: Path) -> dict[str, str]:
        """A clean environment: the venv's scripts first, no PYTHONPATH, no dev venv."""
        keep = {k: v for k, v in tool_env().items() if k.startswith(("OPENBLAS_", "LANG", "LC_"))}
        return {**keep, "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}


def wheel_name(package: Path) -> str:
    name: str = tomllib.loads((package / "pyproject.toml").read_text())["project"]["name"]
    return name.replace("-", "_")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    started = time.monotonic()
    built = build_wheels(tmp_path_factory.mktemp("wheelhouse"))
    print(f"figure: {len(built)} wheels built in {time.monotonic() - started:.1f} s")
    return built


@pytest.fixture(scope="module")
def installed(wheels: list[Path]) -> Installed:
    started = time.monotonic()
    runtime = [w for w in wheels if not w.name.startswith(TEST_ONLY)]
    venv = CACHE / f"venv-{requirements_key(runtime)}"
    reused = (venv / ".complete").exists()
    if not reused:
        shutil.rmtree(venv, ignore_errors=True)
        for old in CACHE.glob("venv-*"):
            shutil.rmtree(old)  # one environment kept: the current one
        run_uv("venv", "--quiet", "--python", sys.executable, str(venv))
        run_uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
               "--constraint", str(CONSTRAINTS), *map(str, runtime))  # fmt: skip
        (venv / ".complete").write_text("")
    stamp, code = venv / ".wheels", digest(w.read_bytes() for w in runtime)
    if not stamp.exists() or stamp.read_text() != code:
        if reused:  # same dependencies, new code: only the wheels themselves again
            run_uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                   "--reinstall", "--no-deps", *map(str, runtime))  # fmt: skip
        stamp.write_text(code)
    seconds = time.monotonic() - started
    print(f"figure: virtualenv {'reused' if reused else 'created'} in {seconds:.1f} s")
    return Installed(venv, seconds, reused)


def run_uv(*args: str) -> None:
    subprocess.run([uv(), *args], env=tool_env(), check=True, cwd=CACHE.parent)


def test_each_wheel_carries_every_file_of_its_package(wheels: list[Path]) -> None:
    by_name = {w.name.split("-")[0]: w for w in wheels}
    assert sorted(by_name) == sorted(wheel_name(p) for p in PACKAGES)
    data_files = 0
    for package in PACKAGES:
        with zipfile.ZipFile(by_name[wheel_name(package)]) as archive:
            inside = set(archive.namelist())
        src = package / "src"
        shipped = {
            f.relative_to(src).as_posix()
            for f in src.rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".pyc")
        }
        assert shipped - inside == set(), f"{package.name}: missing from its wheel"
        data_files += sum(not name.endswith(".py") for name in shipped)
    assert data_files >= 7  # the dashboard's 3 files, the ComfyUI templates, py.typed...


def test_each_service_has_one_console_script_and_the_libs_none(wheels: list[Path]) -> None:
    scripts: dict[str, list[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
            text = archive.read(names[0]).decode() if names else ""
        groups = configparser.ConfigParser(interpolation=None)
        groups.read_string(text)  # other groups too: the worker's `pixelbus models` command
        found = list(groups["console_scripts"]) if groups.has_section("console_scripts") else []
        scripts[wheel.name.split("-")[0]] = found
    for service, script in ENTRY_POINTS.items():
        assert scripts.pop(f"pixelbus_{service.replace('-', '_')}") == [script]
    assert scripts.pop("pixelbus_cli") == ["pixelbus"]
    assert all(found == [] for found in scripts.values()), scripts


def _module_owners() -> dict[str, str]:
    """Module name → the distribution installed here that provides it."""
    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        for file in dist.files or ():
            parts = file.parts
            if parts and parts[-1].endswith((".py", ".so", ".pyd")) and ".." not in parts:
                module = [*parts[:-1], parts[-1].split(".")[0]]
                if module[-1] == "__init__":
                    module.pop()
                if module:
                    owners.setdefault(".".join(module), name)
    return owners


def _imports(src: Path) -> Iterator[str]:
    for file in src.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from opentelemetry import trace`: the name may be a module of its own
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_every_third_party_import_is_a_declared_dependency(wheels: list[Path]) -> None:
    owners = _module_owners()
    undeclared: dict[str, set[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            [meta] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            headers = Parser().parsestr(archive.read(meta).decode())
        own = re.sub(r"[-_.]+", "-", headers["Name"]).lower()
        declared = {
            re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]).lower()
            for r in headers.get_all("Requires-Dist") or []
        }  # optional extras included
        package = next(p for p in PACKAGES if wheel_name(p) == own.replace("-", "_"))
        for module in set(_imports(package / "src")):
            if module.split(".")[0] in sys.stdlib_module_names:
                continue
            parts = module.split(".")
            if parts[0] == "pixelbus":  # ours are editable installs here: named by module
                owners[module] = "pixelbus-" + parts[1].replace("_", "-")
            owner = next(
                (
                    owners[".".join(parts[:n])]
                    for n in range(len(parts), 0, -1)
                    if ".".join(parts[:n]) in owners
                ),
                None,
            )
            assert owner is not None, f"{own}: nothing installed provides {module}"
            if owner != own and owner not in declared:
                undeclared.setdefault(own, set()).add(owner)
    assert undeclared == {}


@pytest.mark.timeout(300)  # a cold run builds the virtualenv first (about 25 s here)
def test_installed_packages_load_from_the_virtualenv_alone(
    installed: Installed, tmp_path: Path
) -> None:
    probe = (
        "import importlib, json, sys\n"
        "from importlib.resources import files\n"
        f"names = {sorted(m.replace('-', '_') for m in ENTRY_POINTS)} + ['cli', 'client', 'completions']\n"
        "mods = {n: importlib.import_module('pixelbus.' + n).__file__ for n in names}\n"
        "data = [str(files('pixelbus.gateway') / 'dashboard' / 'index.html'),\n"
        "        *map(str, (files('pixelbus.comfy_worker') / 'templates').iterdir())]\n"
        "print(json.dumps({'path': sys.path, 'modules': mods, 'data': data}))\n"
    )
    out = subprocess.run(
        [str(installed.bin / "python"), "-c", probe],
        cwd=tmp_path,
        env=installed.env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    site = str(installed.venv / "lib")
    assert all(not p.startswith(str(ROOT)) or p.startswith(site) for p in found["path"]), found[
        "path"
    ]
    assert all(f.startswith(site) for f in found["modules"].values()), found["modules"]
    assert all(f.startswith(site) and Path(f).is_file() for f in found["data"]), found["data"]
    assert len(found["data"]) >= 4  # the dashboard and the ComfyUI templates
    for script in [*ENTRY_POINTS.values(), "pixelbus"]:
        assert (installed.bin / script).is_file(), script


@pytest.mark.timeout(300)  # a cold run builds the virtualenv first (about 25 s here)
async def test_installed_services_complete_a_face_swap_and_a_comfy_task(
    installed: Installed,
    nats_server: NatsServer,
    fake_comfyui: FakeComfyUI,
    tmp_path: Path,
    astronaut: Path,
    grace_hopper: Path,
) -> None:
    port = free_port()
    settings = stack_settings(nats_server.url, str(tmp_path / "storage"), port, fake_comfyui.url)
    env = {**installed.env(tmp_path), **settings}
    probe_ports = {service: free_port() for service in ENTRY_POINTS}
    started = time.monotonic()
    with processes(tmp_path / "logs") as stack:
        for service, script in ENTRY_POINTS.items():
            service_env = {**env, "PIXELBUS_PROBE_PORT": str(probe_ports[service])}
            stack.start(service, [str(installed.bin / script)], service_env, cwd=tmp_path)
        await wait_ready(probe_ports, stack, timeout_s=60)
        ready_s = time.monotonic() - started
        nc = await nats.connect(nats_server.url)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                seconds = await run_both_tasks(http, nc, astronaut, grace_hopper, stack)
        finally:
            await nc.close()
        codes = stack.stop()
    print(
        f"figure: installed stack ready in {ready_s:.1f} s; face swap {seconds['face_swap']:.1f} s,"
        f" ComfyUI task {seconds['comfy']:.1f} s; exit codes after SIGTERM {codes}"
    )
    # each stopped on its own (no SIGKILL, no crash); uvicorn re-raises SIGTERM once it has
    # shut down, so the gateway ends by that signal, as Kubernetes expects (exit 143)
    assert all(code in (0, -signal.SIGTERM) for code in codes.values()), (codes, stack.logs())
