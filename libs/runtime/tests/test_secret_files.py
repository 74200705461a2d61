"""Secrets mounted as files: ``NAME_FILE`` is read into ``NAME``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.settings import with_secret_files


def test_a_file_secret_is_read_and_a_conflict_or_missing_file_refused(tmp_path: Path) -> None:
    secret = tmp_path / "r2-secret"
    secret.write_text("s3cr3t-value\n")
    env = with_secret_files({"R2_SECRET_ACCESS_KEY_FILE": str(secret), "OTHER": "x"})
    assert env["R2_SECRET_ACCESS_KEY"] == "s3cr3t-value" and env["OTHER"] == "x"
    with pytest.raises(SettingsError, match="both set"):
        with_secret_files({"R2_SECRET_ACCESS_KEY": "a", "R2_SECRET_ACCESS_KEY_FILE": str(secret)})
    assert "TF_CLI_CONFIG" not in with_secret_files({"TF_CLI_CONFIG_FILE": "/nonexistent"})
    with pytest.raises(SettingsError, match=r"PIXELBUS_LEASE_SECRET_FILE=.*cannot be read"):
        with_secret_files({"PIXELBUS_LEASE_SECRET_FILE": str(tmp_path / "missing")})
