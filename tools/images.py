"""``./dev images``: every service image of ``deploy/images/Dockerfile``, built here.

No Docker daemon is needed: buildah builds (``--storage-driver vfs --isolation chroot``,
as root) from a base image made with Debian's own packages: ``debootstrap`` of a minimal
bookworm with python3, python3-venv and ca-certificates, from the apt mirror this machine
is configured with (read from its apt sources now), trimmed of apt's lists, docs and
locales, and imported with ``buildah from scratch``; the build stages run on the same
with binutils added (their ``strip``). A build fetches nothing: the wheels
are made on this machine first (``tools.wheels``) and installed in the image with
``--no-index``.

Everything slow is kept between runs outside the repository, under
``$PIXELBUS_IMAGE_CACHE`` (default ``~/.cache/pixelbus/images``): the base's root file
system, the third-party wheels (keyed by their pins) and buildah's own storage with its
layer cache, so a second run rebuilds only what changed.

    python -m tools.images [TARGET...] [--tag TAG]   build (all by default), print sizes
    python -m tools.images context DIR [--wheels index]   only the build context
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from tools.wheels import CONSTRAINTS, ROOT, build_wheels, digest, third_party_wheels, tool_env, uv

__all__ = [
    "DOCKERFILE",
    "IMAGES",
    "Buildah",
    "apt_mirror",
    "base_image",
    "build_images",
    "cannot_build",
    "make_context",
]

DOCKERFILE = ROOT / "deploy" / "images" / "Dockerfile"
INSTALL_SCRIPT = ROOT / "deploy" / "images" / "install-venv.sh"
#: target → the pixelbus distributions its virtualenv holds (the Dockerfile's `own` steps)
IMAGES: dict[str, tuple[str, ...]] = {
    "gateway": ("pixelbus-gateway",),
    "projector": ("pixelbus-projector",),
    "webhooks": ("pixelbus-webhooks",),
    "faceswap-worker": ("pixelbus-faceswap-worker", "pixelbus-cli"),
    "storage-uploader": ("pixelbus-storage-uploader",),
    "comfy-worker": ("pixelbus-comfy-worker",),
}
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: the build stages' image: the base and binutils (strip takes the debug info out of the
#: wheels' compiled modules; the runtime stages never hold it)
BUILDER_PACKAGES = (*BASE_PACKAGES, "binutils")
#: removed from the debootstrapped tree: apt's downloads and lists, docs (each package's
#: copyright file stays), manuals, translations, logs
TRIM = (
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "var/log/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelbus"
    return Path(os.environ.get("PIXELBUS_IMAGE_CACHE", default / "images"))


@dataclass(frozen=True)
class Buildah:
    """buildah on its own storage under the cache. The driver is overlay where the kernel
    lets root mount it (as here), else vfs: vfs needs no mounts but copies the whole tree
    for every layer of every step (one service image took 5.5 min with vfs here)."""

    root: Path
    driver: str = "vfs"

    @classmethod
    def at(cls, root: Path) -> Buildah:
        for driver in ("overlay", "vfs"):
            buildah = cls(root / driver, driver)
            if driver == "vfs" or buildah.works():
                return buildah
        raise AssertionError("unreachable")

    def command(self, *args: str) -> list[str]:
        return [
            "buildah", "--storage-driver", self.driver,
            "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
            *args,
        ]  # fmt: skip

    def works(self) -> bool:
        """A scratch container can be made and mounted on this storage."""
        made = subprocess.run(self.command("from", "scratch"), capture_output=True, text=True)
        if made.returncode != 0:
            return False
        container = made.stdout.strip()
        mounted = subprocess.run(self.command("mount", container), capture_output=True)
        subprocess.run(self.command("rm", container), capture_output=True)
        return mounted.returncode == 0

    def __call__(self, *args: str, quiet: bool = False) -> str:
        done = subprocess.run(
            self.command(*args),
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            text=True,
        )
        return done.stdout.strip()

    def has_image(self, name: str) -> bool:
        found = subprocess.run(
            self.command("inspect", "--type", "image", name), capture_output=True, check=False
        )
        return found.returncode == 0

    def image_id(self, name: str) -> str | None:
        found = subprocess.run(
            self.command("images", "--quiet", "--no-trunc", name),
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout.strip() or None if found.returncode == 0 else None

    def image_size(self, name: str) -> int:
        """Bytes of the image's layers (uncompressed tar, as buildah stores them)."""
        manifest = json.loads(json.loads(self("inspect", "--type", "image", name))["Manifest"])
        return sum(int(layer["size"]) for layer in manifest["layers"])

    def config(self, name: str) -> dict[str, object]:
        """The image's OCI config (``config`` part: Entrypoint, User, Env, Labels...)."""
        inspected = json.loads(self("inspect", "--type", "image", name))
        config: dict[str, object] = inspected["OCIv1"]["config"]
        return config


def cannot_build() -> str | None:
    """Why images cannot be built on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "buildah with chroot isolation and debootstrap need root"
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install buildah debootstrap)"
    return None


def apt_mirror(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 or one-line form)."""
    sources = sorted((etc / "sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
            )  # continuation lines are not needed for these fields
            if fields.get("Enabled", "yes").lower() == "no":
                continue
            if (
                "deb" in fields.get("Types", "").split()
                and suite in fields.get("Suites", "").split()
            ):
                uri: str = fields["URIs"].split()[0]
                return uri
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise RuntimeError(f"no apt source for {suite} in {etc}: cannot debootstrap a base")


def base_image(buildah: Buildah, packages: Sequence[str] = BASE_PACKAGES) -> str:
    """``localhost/pixelbus-base:<suite>-<key>``: Debian minbase with ``packages``, made
    once (debootstrap, about a minute)."""
    key = digest([SUITE.encode(), " ".join(packages).encode(), " ".join(TRIM).encode(), b"1"])
    name = f"localhost/pixelbus-base:{SUITE}-{key}"
    if buildah.has_image(name):
        return name
    cache = cache_dir()
    tarball = cache / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        _debootstrap(tarball, packages)
    container = buildah("from", "scratch")
    try:
        buildah("add", container, str(tarball), "/")
        buildah(
            "config",
            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8",
            "--cmd", "python3",
            "--label", f"org.opencontainers.image.description=Debian {SUITE} minbase: "
            + ", ".join(packages),
            container,
        )  # fmt: skip
        buildah("commit", "--quiet", "--rm", container, name)
    except BaseException:
        subprocess.run(buildah.command("rm", container), capture_output=True, check=False)
        raise
    return name


def _debootstrap(tarball: Path, packages: Sequence[str]) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        print(f"images: debootstrap {SUITE} (minbase + {', '.join(packages)})", flush=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             SUITE, str(rootfs), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for pattern in TRIM:
            for path in rootfs.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for doc in (rootfs / "usr/share/doc").glob("*/*"):
            if doc.name != "copyright":
                shutil.rmtree(doc) if doc.is_dir() and not doc.is_symlink() else doc.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--create", "--file", str(partial), "--directory", str(rootfs),
             "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
             "."],
            check=True,
        )  # fmt: skip
        partial.rename(tarball)


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        [meta] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist") or []


def _closure(dists: Sequence[str], wheels: dict[str, Path]) -> list[Path]:
    """The wheels of ``dists`` and of every pixelbus distribution they need (no extras)."""
    seen: dict[str, Path] = {}
    todo = list(dists)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = wheels[name]
        for requirement in _requires(wheels[name]):
            dep = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
            if dep.startswith("pixelbus-") and "extra ==" not in requirement:
                todo.append(dep)
    return sorted(seen.values())


def _pins(wheels: Sequence[Path]) -> list[str]:
    """The third-party pins that installing ``wheels`` needs (constraints.txt decides)."""
    with tempfile.NamedTemporaryFile("w", suffix=".in") as wanted:
        wanted.write("".join(f"{w}\n" for w in wheels))
        wanted.flush()
        out = subprocess.run(
            [uv(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--universal",
             "--python-version", "3.11", "--constraint", str(CONSTRAINTS), wanted.name],
            env=tool_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    return [line for line in out.splitlines() if "==" in line and not line.startswith("pixelbus")]


def make_context(out: Path, *, wheels: str = "context") -> Path:
    """The Dockerfile's build context in ``out`` (see its header)."""
    shutil.rmtree(out, ignore_errors=True)
    own = build_wheels(out / "wheels" / "pixelbus")
    by_name = {w.name.split("-")[0].replace("_", "-"): w for w in own}
    requirements = out / "requirements"
    requirements.mkdir()
    every: set[str] = set()
    for target, dists in IMAGES.items():
        pins = _pins(_closure(dists, by_name))
        (requirements / f"{target}.txt").write_text("".join(f"{p}\n" for p in pins))
        every.update(pins)
    (requirements / "all.txt").write_text("".join(f"{p}\n" for p in sorted(every)))
    shutil.copy(CONSTRAINTS, out / "constraints.txt")
    shutil.copy(INSTALL_SCRIPT, out / "install-venv.sh")
    third_party = out / "wheels" / "third-party"
    third_party.mkdir()
    if wheels == "context":
        for wheel in _third_party(requirements / "all.txt"):
            _link(wheel, third_party / wheel.name)
    return out


def _third_party(requirements: Path) -> list[Path]:
    """The wheels of ``requirements``, kept in the cache under their pins' digest."""
    kept = cache_dir() / f"wheels-{digest([requirements.read_bytes()])}"
    if not (kept / ".complete").exists():
        shutil.rmtree(kept, ignore_errors=True)
        for old in cache_dir().glob("wheels-*"):
            shutil.rmtree(old)
        print("images: third-party wheels (pip wheel, constraints.txt)", flush=True)
        third_party_wheels(requirements, kept)
        (kept / ".complete").write_text("")
    return sorted(kept.glob("*.whl"))


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def build_images(
    buildah: Buildah, targets: Sequence[str], *, tag: str = "dev", context: Path | None = None
) -> dict[str, str]:
    """Build ``targets``; target → image name. Layers are cached in buildah's storage."""
    base = base_image(buildah)
    builder = base_image(buildah, BUILDER_PACKAGES)
    context = make_context(context or ROOT / ".pixelbus" / "images" / "context")
    names = {}
    for target in targets:
        name = f"localhost/pixelbus/{target}:{tag}"
        before = buildah.image_id(name)
        buildah(
            "build", "--quiet", "--isolation", "chroot", "--layers", "--pull=never",
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"BUILDER_IMAGE={builder}",
            "--build-arg", f"VERSION={version()}",
            "--build-arg", f"REVISION={revision()}",
            "--target", target, "--tag", name, "--file", str(DOCKERFILE), str(context),
        )  # fmt: skip
        names[target] = name
        if before and before != buildah.image_id(name):
            # the image this tag replaced: its own layers (a whole virtualenv) would pile up
            # in the cache with every change; the layers it shares with the new one stay
            subprocess.run(buildah.command("rmi", before), capture_output=True, check=False)
    return names


def version() -> str:
    text = (ROOT / "services" / "gateway" / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"', text, re.M)
    return found.group(1) if found else "0.0.0"


def revision() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["context"]:
        context = argparse.ArgumentParser(prog="./dev images context")
        context.add_argument("out", type=Path)
        context.add_argument("--wheels", choices=("context", "index"), default="context")
        options = context.parse_args(argv[1:])
        print(make_context(options.out, wheels=options.wheels))
        return 0
    parser = argparse.ArgumentParser(prog="./dev images", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all ({', '.join(IMAGES)})")
    parser.add_argument("--tag", default="dev")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(IMAGES)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(IMAGES)}")
    reason = cannot_build()
    if reason:
        print(f"images: cannot build here: {reason}", file=sys.stderr)
        return 1
    buildah = Buildah.at(cache_dir() / "buildah")
    started = time.monotonic()
    names = build_images(buildah, args.targets or list(IMAGES), tag=args.tag)
    base = buildah.image_size(base_image(buildah))
    print(f"images built in {time.monotonic() - started:.0f} s (base {base / 1e6:.0f} MB):")
    for name in names.values():
        size = buildah.image_size(name)
        print(f"  {name:45} {size / 1e6:6.0f} MB  (+{(size - base) / 1e6:.0f} MB on the base)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
