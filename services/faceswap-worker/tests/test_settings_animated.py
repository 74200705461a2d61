"""``PIXELBUS_ANIMATED_INPUTS`` reaches the face-swap worker's settings, and a bad value
stops the start."""

from __future__ import annotations

import pytest

from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.runtime.errors import SettingsError


def test_animated_inputs_setting() -> None:
    assert FaceSwapSettings.from_env({}).animated_inputs == "first_frame"
    assert (
        FaceSwapSettings.from_env({"PIXELBUS_ANIMATED_INPUTS": "refuse"}).animated_inputs
        == "refuse"
    )
    with pytest.raises(SettingsError, match="PIXELBUS_ANIMATED_INPUTS"):
        FaceSwapSettings.from_env({"PIXELBUS_ANIMATED_INPUTS": "all_frames"})
