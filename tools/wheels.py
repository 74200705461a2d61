"""Wheels of the workspace's packages, and the third-party wheels they need.

``build_wheels`` builds every lib and service with ``uv build`` (hatchling; reproducible:
the same sources give the same bytes). ``requirements_key`` names what an installation of
those wheels depends on (their metadata and entry points, and ``constraints.txt``), so that
an environment made from them can be reused until that changes. ``third_party_wheels`` fills
a wheelhouse with every dependency, pinned by ``constraints.txt``, from the package index
configured on this machine, for an install with ``--no-index`` (a container build).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"

__all__ = [
    "CONSTRAINTS",
    "ROOT",
    "build_wheels",
    "digest",
    "requirements_key",
    "third_party_wheels",
    "tool_env",
    "uv",
]


def uv() -> str:
    """The ``uv`` that ``./dev`` installs beside the interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise RuntimeError("uv not found: run ./dev (it installs uv into .venv)")
    return found


def tool_env() -> dict[str, str]:
    """This environment without the dev virtualenv's marks, for tools that make another."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def build_wheels(out_dir: Path) -> list[Path]:
    """Every workspace package's wheel in ``out_dir`` (emptied first)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    subprocess.run(
        [uv(), "build", "--all-packages", "--wheel", "--quiet", "--out-dir", str(out_dir)],
        cwd=ROOT,
        env=tool_env(),
        check=True,
    )
    return sorted(out_dir.glob("pixelbus_*.whl"))


def digest(parts: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(hashlib.sha256(part).digest())
    return sha.hexdigest()[:16]


def _dist_info(wheel: Path, names: Sequence[str]) -> Iterable[bytes]:
    with zipfile.ZipFile(wheel) as archive:
        for member in sorted(archive.namelist()):
            if ".dist-info/" in member and member.rsplit("/", 1)[-1] in names:
                yield member.encode() + archive.read(member)


def requirements_key(wheels: Sequence[Path], constraints: Path = CONSTRAINTS) -> str:
    """Changes when what installing ``wheels`` brings in changes: their declared
    dependencies and entry points, or a pin; not when only their code does."""
    parts = [constraints.read_bytes()]
    for wheel in wheels:
        parts.extend(_dist_info(wheel, ("METADATA", "entry_points.txt")))
    return digest(parts)


def third_party_wheels(requirements: Path, out_dir: Path) -> list[Path]:
    """Every pin of ``requirements`` as a wheel in ``out_dir`` (an sdist is built by pip),
    for this interpreter's Python version and platform, from the configured index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--prefer-binary", "--wheel-dir", str(out_dir),
         "--constraint", str(CONSTRAINTS), "--requirement", str(requirements)],
        env=tool_env(),
        stderr=subprocess.PIPE,  # pip warns for every index it cannot read: shown on failure
        text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{done.stderr}")
    return sorted(out_dir.glob("*.whl"))
