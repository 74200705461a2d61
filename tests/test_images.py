"""The service images, built here in this run and the stack run from them.

``tools.images`` builds every target of ``deploy/images/Dockerfile`` with buildah from a
debootstrapped Debian bookworm base (both cached outside the repository between runs, so
a second run rebuilds only what changed). Each service then runs from its image with
``buildah run --isolation chroot --network host`` as the image's own user, with only /tmp
(and the local storage) mounted, against a nats-server and the fake ComfyUI on this
machine, and completes a face swap and a ComfyUI task. Nothing may be written into an
image's root file system meanwhile (Kubernetes mounts it read-only).

Skipped, with the reason printed, where images cannot be built: not root, or buildah or
debootstrap missing (``./dev`` installs both on Debian).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from tools.images import IMAGES, Buildah, base_image, build_images, cache_dir, cannot_build

from pixelbus.testkit.fake_comfyui import FakeComfyUI
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.s3_server import S3Server
from tests.deployed import ENTRY_POINTS, processes, run_both_tasks, stack_settings, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # a cold build: about 6 min here

#: files that ``buildah run`` itself writes into a container (its DNS and host files)
LAUNCHER_FILES = {"etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv"}


#: MB per image on the debootstrapped base (129 MB, about python:3.12-slim-bookworm's
#: size); where the face-swap worker's bytes go: deploy/k8s/README.md (PyAV, for video
#: targets, brings about 100 MB of FFmpeg libraries: 674 MB measured)
SIZE_BUDGET_MB = {**dict.fromkeys(IMAGES, 200), "faceswap-worker": 720}


@dataclass(frozen=True)
class Built:
    buildah: Buildah
    names: dict[str, str]
    sizes_mb: dict[str, float]


@pytest.fixture(scope="module")
def built() -> Built:
    reason = cannot_build()
    if reason:
        print(f"images: skipped: {reason}")
        pytest.skip(reason)
    buildah = Buildah.at(cache_dir() / "buildah")
    started = time.monotonic()
    names = build_images(buildah, list(IMAGES), tag="test")
    base = buildah.image_size(base_image(buildah))
    sizes = {t: buildah.image_size(n) / 1e6 for t, n in names.items()}
    print(
        f"figure: {len(names)} images built in {time.monotonic() - started:.0f} s"
        f" ({buildah.driver}); base {base / 1e6:.0f} MB; "
        + ", ".join(f"{t} {mb:.0f} MB" for t, mb in sizes.items())
    )
    return Built(buildah, names, sizes)


@contextlib.contextmanager
def containers(built: Built) -> Iterator[dict[str, str]]:
    """A working container of each image (buildah from), removed afterwards."""
    made: dict[str, str] = {}
    try:
        for target, name in built.names.items():
            made[target] = built.buildah("from", "--pull=never", "--quiet", name)
        yield made
    finally:
        for container in made.values():
            subprocess.run(built.buildah.command("rm", container), capture_output=True)


def written_since(built: Built, container: str, since: float) -> list[str]:
    """Files of the container's root file system changed after ``since``."""
    root = Path(built.buildah("mount", container))
    try:
        changed = []
        for path in root.rglob("*"):
            relative = path.relative_to(root).as_posix()
            if relative.split("/")[0] in ("proc", "sys", "dev", "tmp", "storage"):
                continue
            is_file = path.is_file() and not path.is_symlink()
            if is_file and path.stat().st_mtime > since and relative not in LAUNCHER_FILES:
                changed.append(relative)
        return changed
    finally:
        built.buildah("umount", container)


def test_every_image_stays_within_its_size_budget(built: Built) -> None:
    over = {t: round(mb) for t, mb in built.sizes_mb.items() if mb > SIZE_BUDGET_MB[t]}
    assert over == {}, f"over budget {SIZE_BUDGET_MB}: {over}"


def test_each_image_runs_its_service_as_a_user_with_no_build_tools(built: Built) -> None:
    with containers(built) as made:
        for target, name in built.names.items():
            config = built.buildah.config(name)
            assert config["User"] == "10001:10001", target
            assert config["Entrypoint"] == [ENTRY_POINTS[target]], target
            assert config["StopSignal"] == "SIGTERM", target
            labels = config["Labels"]
            assert isinstance(labels, dict)
            for label in ("title", "version", "revision", "source", "licenses"):
                assert labels.get(f"org.opencontainers.image.{label}"), (target, label)
            root = Path(built.buildah("mount", made[target]))
            try:
                venv = root / "opt" / "pixelbus"
                assert (venv / "bin" / ENTRY_POINTS[target]).is_file(), target
                for tool in ("bin/pip", "bin/pip3"):
                    assert not (venv / tool).exists(), (target, tool)
                for tool in ("gcc", "cc", "make", "apt-get"):
                    assert tool == "apt-get" or not (root / "usr/bin" / tool).exists(), target
                sites = list((venv / "lib").glob("python3*/site-packages"))
                assert not any(s.joinpath("pip").exists() for s in sites), target
            finally:
                built.buildah("umount", made[target])


#: run in the uploader's image: its R2 provider stores one object (its image keeps only
#: the S3 models of botocore's data, see the Dockerfile)
R2_PUT = """
import asyncio, sys
from pixelbus.storage_uploader.providers.base import store_bytes
from pixelbus.storage_uploader.providers.r2 import R2Provider
from pixelbus.storage_uploader.settings import R2Settings

async def put():
    endpoint, key_id, secret, bucket = sys.argv[1:]
    provider = R2Provider(R2Settings(access_key_id=key_id, secret_access_key=secret,
        bucket=bucket, public_url=None, endpoint_url=endpoint))
    try:
        await store_bytes(provider, "from-the-image/hello.txt", b"hello from the image",
            "text/plain")
    finally:
        await provider.aclose()

asyncio.run(put())
"""


def test_the_uploader_image_stores_into_an_s3_server(
    built: Built, s3_server: S3Server, s3_bucket: str
) -> None:
    with containers(built) as made:
        credentials = s3_server.credentials
        built.buildah(
            "run", "--isolation", "chroot", "--network", "host", made["storage-uploader"],
            "--", "python", "-c", R2_PUT, s3_server.endpoint_url,
            credentials.access_key_id, credentials.secret_access_key, s3_bucket,
        )  # fmt: skip
    stored = s3_server.client().get_object(Bucket=s3_bucket, Key="from-the-image/hello.txt")
    assert stored["Body"].read() == b"hello from the image"
    assert stored["ContentType"] == "text/plain"


async def test_stack_from_the_images_completes_a_face_swap_and_a_comfy_task(
    built: Built,
    nats_server: NatsServer,
    fake_comfyui: FakeComfyUI,
    tmp_path: Path,
    astronaut: Path,
    grace_hopper: Path,
) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    storage.mkdir()
    os.chown(storage, 10001, 10001)
    settings = stack_settings(nats_server.url, "/storage", port, fake_comfyui.url)
    probe_ports = {service: free_port() for service in ENTRY_POINTS}
    host_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    since = time.time() - 1
    with containers(built) as made:
        started = time.monotonic()
        with processes(tmp_path / "logs", launched=True) as stack:
            for service in ENTRY_POINTS:
                scratch = tmp_path / f"tmp-{service}"
                scratch.mkdir()
                os.chown(scratch, 10001, 10001)
                env = {**settings, "PIXELBUS_PROBE_PORT": str(probe_ports[service])}
                entrypoint = built.buildah.config(built.names[service])["Entrypoint"]
                assert isinstance(entrypoint, list)
                argv = built.buildah.command(
                    "run", "--isolation", "chroot", "--network", "host",
                    "--volume", f"{scratch}:/tmp", "--volume", f"{storage}:/storage",
                    *(f"--env={k}={v}" for k, v in env.items()),
                    made[service], "--", *entrypoint,
                )  # fmt: skip
                stack.start(service, argv, host_env, cwd=tmp_path)
            await wait_ready(probe_ports, stack, timeout_s=90)
            ready_s = time.monotonic() - started
            nc = await nats.connect(nats_server.url)
            try:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=30
                ) as http:
                    seconds = await run_both_tasks(http, nc, astronaut, grace_hopper, stack)
            finally:
                await nc.close()
            codes = stack.stop()
        written = {s: written_since(built, made[s], since) for s in ENTRY_POINTS}
    print(
        f"figure: stack from images ready in {ready_s:.1f} s; face swap"
        f" {seconds['face_swap']:.1f} s, ComfyUI task {seconds['comfy']:.1f} s; exit codes"
        f" after SIGTERM {codes}"
    )
    # each stopped on its own (no SIGKILL); uvicorn re-raises SIGTERM once it has shut
    # down, which buildah run reports as status 1
    graceful = {s: 0 for s in ENTRY_POINTS} | {"gateway": codes["gateway"] and 1}
    assert codes == graceful, (codes, stack.logs())
    assert all(files == [] for files in written.values()), written
