"""The README's settings tables are the declarations' (``python -m tools.settings_doc``)."""

from __future__ import annotations

from tools.settings_doc import README, render


def test_the_readme_settings_tables_are_generated_from_the_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- settings: ") == 8
    assert render(text) == text, "README.md is stale: run python -m tools.settings_doc"


def test_every_declared_setting_says_what_it_means() -> None:
    rows = [row for row in render(README.read_text(encoding="utf-8")).splitlines()]
    undocumented = [row for row in rows if row.startswith("| `") and row.endswith("|  |")]
    assert undocumented == []
