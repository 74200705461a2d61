"""``python -m tools.settings_doc``: the README's settings tables, written from the
declarations (``pixelbus.runtime.settings``); ``--check`` only says whether they are stale.

Each table sits between ``<!-- settings: module:Class -->`` and ``<!-- /settings -->``; a
section that has a table of its own (the bus settings every service reads) is left out of
the others. ``tests/test_settings_doc.py`` fails when the README differs from this.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from pixelbus.runtime.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
_TABLE = re.compile(r"(<!-- settings: ([\w.]+):(\w+) -->\n).*?(<!-- /settings -->)", re.S)


def _class(module: str, name: str) -> type:
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def render(text: str) -> str:
    """``text`` with every settings table rewritten from its class."""
    own = [_class(module, name) for _, module, name, _ in _TABLE.findall(text)]

    def table(match: re.Match[str]) -> str:
        cls = _class(match[2], match[3])
        rows = settings_table(cls, skip=tuple(other for other in own if other is not cls))
        head = "| setting | default | meaning |\n| --- | --- | --- |\n"
        return match[1] + head + "".join(f"{row}\n" for row in rows) + match[4]

    return _TABLE.sub(table, text)


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    fresh = render(text)
    if "--check" in argv:
        print("README settings tables are", "up to date" if fresh == text else "stale")
        return int(fresh != text)
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
