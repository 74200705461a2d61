"""Services that only guard URLs (gateway, webhook sender) install pixelbus-media without
its extras: importing the package and its URL modules must not need Pillow or numpy."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
{imports}
heavy = sorted({{"PIL", "numpy"}} & set(sys.modules))
print(",".join(heavy))
"""


def loaded_heavy_modules(imports: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after ``imports``."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in done.stdout.strip().split(",") if name]


@pytest.mark.parametrize(
    "imports",
    [
        "import pixelbus.media",
        "from pixelbus.media import SsrfPolicy, fetch_bytes, MediaError",
        "import pixelbus.media.ssrf, pixelbus.media.fetch, pixelbus.media.data_uri",
        "import pixelbus.gateway.app",
        "import pixelbus.webhooks.service",
    ],
)
def test_url_guarding_needs_neither_pillow_nor_numpy(imports: str) -> None:
    assert loaded_heavy_modules(imports) == []


def test_open_image_needs_pillow_only_and_arrays_need_numpy() -> None:
    assert loaded_heavy_modules("from pixelbus.media import open_image") == ["PIL"]
    assert loaded_heavy_modules("import pixelbus.comfy_worker.handler") == ["PIL"]
    assert loaded_heavy_modules("from pixelbus.media import decode_image") == ["PIL", "numpy"]
