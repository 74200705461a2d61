"""Leases per pool: one short default, a longer one where external consumers draw."""

from __future__ import annotations

import pytest

from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import BusSettings


def test_pools_follow_the_default_lease_except_comfy() -> None:
    settings = BusSettings.from_env({})
    assert settings.ack_wait_s == 3
    assert settings.ack_wait_for("faceswap") == 3
    assert settings.ack_wait_for("comfy") == 30


def test_a_pool_lease_is_set_on_its_own() -> None:
    settings = BusSettings.from_env(
        {"PIXELBUS_ACK_WAIT_S": "3", "PIXELBUS_ACK_WAIT_S_FACESWAP": "1.5"}
    )
    assert settings.ack_wait_for("faceswap") == 1.5
    assert settings.ack_wait_for("comfy") == 30
    assert BusSettings.from_env({"PIXELBUS_ACK_WAIT_S_COMFY": "4"}).ack_wait_for("comfy") == 4


def test_a_bad_pool_lease_names_its_setting() -> None:
    with pytest.raises(SettingsError, match="PIXELBUS_ACK_WAIT_S_COMFY"):
        BusSettings.from_env({"PIXELBUS_ACK_WAIT_S_COMFY": "0"})
