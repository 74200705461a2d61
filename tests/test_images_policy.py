"""deploy/images: the Dockerfiles pass hadolint and our policy, agree with the Kubernetes
manifests (one source of truth for image names, ports, users, volumes and commands), and
the publishing workflow is a valid GitHub workflow that builds every target.

Fast and offline: no image is built here (``tests/test_images.py`` builds and runs them).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools.images import DOCKERFILE, IMAGES

from tests.deployed import ENTRY_POINTS
from tests.test_k8s_manifests import containers, of_kind, render, tool

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DOCKERFILE = ROOT / "deploy" / "images" / "comfyui.Dockerfile"
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"


@dataclass
class Stage:
    """One stage of a Dockerfile: its parent and instructions, continuation lines joined."""

    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for word, args in self.instructions if word == keyword]


def stages(path: Path) -> dict[str, Stage]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, args = line.partition(" ")
        if word.upper() == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else "final"
            current = found[name] = Stage(parts[0])
        elif current is not None:
            current.instructions.append((word.upper(), args.strip()))
    return found


def resolved(all_stages: dict[str, Stage], name: str, keyword: str) -> list[str]:
    """``keyword``'s values through the stage's ancestry, the stage's own last."""
    chain = []
    while name in all_stages:
        chain.append(all_stages[name])
        name = all_stages[name].parent
    return [value for stage in reversed(chain) for value in stage.all(keyword)]


def image_facts(all_stages: dict[str, Stage], target: str) -> dict[str, Any]:
    users = resolved(all_stages, target, "USER")
    exposed = " ".join(resolved(all_stages, target, "EXPOSE")).split()
    volumes = [v for arg in resolved(all_stages, target, "VOLUME") for v in yaml.safe_load(arg)]
    [entrypoint] = resolved(all_stages, target, "ENTRYPOINT")[-1:]
    return {
        "user": users[-1] if users else None,
        "ports": {int(p.split("/")[0]) for p in exposed},
        "volumes": volumes,
        "entrypoint": yaml.safe_load(entrypoint),
        "stopsignal": (resolved(all_stages, target, "STOPSIGNAL") or [""])[-1],
        "labels": " ".join(resolved(all_stages, target, "LABEL")),
    }


@pytest.fixture(scope="module")
def services() -> dict[str, Stage]:
    return stages(DOCKERFILE)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in ("dev", "production")}


def test_hadolint_passes_both_dockerfiles() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE), str(COMFYUI_DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_is_a_target_that_runs_its_console_script_as_a_user(
    services: dict[str, Stage],
) -> None:
    assert set(IMAGES) <= set(services) and set(IMAGES) == set(ENTRY_POINTS)
    assert services["base"].parent == "${BASE_IMAGE}"  # the base image is a build argument
    for target in IMAGES:
        facts = image_facts(services, target)
        assert facts["user"] == "10001:10001", target
        assert facts["stopsignal"] == "SIGTERM", target
        assert facts["entrypoint"] == [ENTRY_POINTS[target]], target
        assert "/tmp" in facts["volumes"], target
        for label in ("source", "version", "revision", "licenses", "title"):
            assert f"org.opencontainers.image.{label}=" in facts["labels"], (target, label)
        # the runtime stages copy the service's virtualenv and run nothing: no build tools
        runtime = [services[target], services[services[target].parent]]
        assert all(stage.all("RUN") == [] for stage in runtime), target
        [copied] = services[target].all("COPY")
        assert copied == f"--from=venv-{target} /opt/pixelbus /opt/pixelbus", target
        own = " ".join(services[f"venv-{target}"].all("RUN"))
        assert f"own {' '.join(IMAGES[target])}" in own, target


def test_manifests_agree_with_the_dockerfiles(
    services: dict[str, Stage], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    comfyui = image_facts(stages(COMFYUI_DOCKERFILE), "final")
    checked = set()
    for overlay, docs in rendered.items():
        for deployment in of_kind(docs, "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for container in containers(deployment):
                image = container["image"].rsplit(":", 1)[0]
                name = image.removeprefix("pixelbus/")
                where = f"{overlay}: {deployment['metadata']['name']}/{container['name']}"
                facts = comfyui if name == "comfyui" else image_facts(services, name)
                user, group = facts["user"].split(":")
                context = {**pod["securityContext"], **container["securityContext"]}
                assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group))
                ports = {p["containerPort"] for p in container.get("ports", [])}
                assert ports and ports <= facts["ports"], (where, ports, facts["ports"])
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert set(facts["volumes"]) <= mounts, (where, facts["volumes"], mounts)
                if name == "comfyui":
                    assert container["args"] == yaml.safe_load(
                        stages(COMFYUI_DOCKERFILE)["final"].all("CMD")[-1]
                    ), where
                else:
                    assert _module(container["command"]) == _script_module(name), where
                checked.add(name)
    assert checked == {*IMAGES, "comfyui"}


def _module(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], command
    return command[2]


def _script_module(target: str) -> str:
    """The module whose ``main`` the image's console script runs."""
    pyproject = tomllib.loads((ROOT / "services" / target / "pyproject.toml").read_text())
    entry: str = pyproject["project"]["scripts"][ENTRY_POINTS[target]]
    return entry.split(":")[0].removesuffix(".__main__")


def test_publishing_workflow_is_valid_and_builds_every_target() -> None:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text())
    on = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert on["push"]["tags"] == ["v*"]
    service = workflow["jobs"]["service"]
    assert service["strategy"]["matrix"]["target"] == list(IMAGES)
    steps = {s.get("uses", "").split("@")[0]: s for s in service["steps"]}
    build = steps["docker/build-push-action"]["with"]
    assert build["file"] == DOCKERFILE.relative_to(ROOT).as_posix()
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["sbom"] is True and build["provenance"].startswith("mode=")
    assert "BASE_IMAGE=python:3.12-slim-bookworm" in build["build-args"]
    comfyui = {s.get("uses", "").split("@")[0]: s for s in workflow["jobs"]["comfyui"]["steps"]}
    assert comfyui["docker/build-push-action"]["with"]["file"] == "deploy/images/comfyui.Dockerfile"
