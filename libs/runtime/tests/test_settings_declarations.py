"""A setting is declared once: reading, the redacted start log and the docs come from it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import (
    REQUIRED,
    BusSettings,
    Settings,
    boolean,
    integer,
    section,
    setting,
    settings_table,
)


@dataclass(frozen=True)
class Inner(Settings):
    url: str = setting("T_URL", REQUIRED)
    """where to go"""


@dataclass(frozen=True)
class Outer(Settings):
    bus: BusSettings = section(BusSettings)  # noqa: RUF009
    size: int = setting("T_SIZE_BYTES", 2 << 20, integer(1, 1 << 30))
    """how big"""
    token: str | None = setting("T_TOKEN", None, secret=True)
    """a secret"""
    on: bool = setting("T_ON", False, boolean)
    """whether"""
    inner: Inner | None = section(Inner, when="T_URL")  # noqa: RUF009


def test_values_are_parsed_and_blank_is_unset() -> None:
    outer = Outer.from_env({"T_SIZE_BYTES": " 7 ", "T_ON": "yes", "T_TOKEN": "  "})
    assert (outer.size, outer.on, outer.token, outer.inner) == (7, True, None, None)
    assert Outer.from_env({"T_URL": "http://x"}).inner == Inner(url="http://x")


def test_every_bad_setting_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        Outer.from_env({"T_SIZE_BYTES": "0", "T_ON": "maybe", "PIXELBUS_MAX_DELIVER": "x"})
    assert str(caught.value) == (
        "PIXELBUS_MAX_DELIVER='x' is not an integer; T_SIZE_BYTES=0 is out of range "
        "[1, 1073741824]; T_ON='maybe' is not a boolean (true/false)"
    )


def test_the_start_log_names_variables_and_masks_secrets() -> None:
    outer = Outer.from_env({"T_TOKEN": "hunter2", "NATS_URL": "nats://u:pw@n:4222"})
    shown = outer.redacted()
    assert shown["T_TOKEN"] == "***" and shown["NATS_URL"] == "nats://***@n:4222"
    assert (shown["T_SIZE_BYTES"], shown["T_ON"]) == ("2097152", "false")
    assert "hunter2" not in repr(outer)


def test_the_docs_rows_come_from_the_declarations() -> None:
    rows = settings_table(Outer, skip=(BusSettings,))
    assert rows == [
        "| `T_SIZE_BYTES` | 2 MiB | how big |",
        "| `T_TOKEN` | — | a secret |",
        "| `T_ON` | `false` | whether |",
        "| `T_URL` | — | where to go |",
    ]
