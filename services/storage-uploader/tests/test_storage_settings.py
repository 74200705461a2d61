from __future__ import annotations

from pathlib import Path

import pytest

from pixelbus.runtime.errors import SettingsError as RuntimeSettingsError
from pixelbus.storage_uploader.errors import SettingsError
from pixelbus.storage_uploader.settings import (
    DEFAULT_PUBLIC_BASE_URL,
    LocalSettings,
    R2Settings,
    StorageSettings,
)

SECRET = "s3cr3t-value-that-must-never-be-logged"
R2_ENV = {
    "STORAGE_PROVIDER": "r2",
    "R2_ACCOUNT_ID": "0123456789abcdef0123456789abcdef",
    "R2_ACCESS_KEY_ID": "AKIDEXAMPLE1234WXYZ",
    "R2_SECRET_ACCESS_KEY": SECRET,
    "R2_BUCKET": "outputs",
    "R2_PUBLIC_URL": "https://cdn.example.com/",
}
R2_REQUIRED = ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET")


def test_defaults_are_the_embedded_local_storage() -> None:
    settings = StorageSettings.from_env({})
    assert settings.provider == "local"
    assert settings.local == LocalSettings(
        directory=Path(".pixelbus/storage"), public_base_url=DEFAULT_PUBLIC_BASE_URL
    )
    assert settings.r2 is None


def test_local_settings_are_read_and_the_url_loses_its_trailing_slash() -> None:
    settings = StorageSettings.from_env(
        {
            "STORAGE_PROVIDER": " Local ",
            "PIXELBUS_LOCAL_STORAGE_DIR": "/srv/pixelbus",
            "PIXELBUS_PUBLIC_BASE_URL": "https://files.example.com/",
        }
    )
    assert settings.local == LocalSettings(
        directory=Path("/srv/pixelbus"), public_base_url="https://files.example.com"
    )


def test_r2_settings_derive_the_endpoint_from_the_account() -> None:
    settings = StorageSettings.from_env(R2_ENV)
    assert settings.provider == "r2"
    assert settings.local is None
    assert settings.r2 == R2Settings(
        account_id="0123456789abcdef0123456789abcdef",
        access_key_id="AKIDEXAMPLE1234WXYZ",
        secret_access_key=SECRET,
        bucket="outputs",
        public_url="https://cdn.example.com",
        endpoint_url="https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
    )


def test_an_endpoint_override_replaces_the_account_id() -> None:
    env = {k: v for k, v in R2_ENV.items() if k != "R2_ACCOUNT_ID"}
    env["PIXELBUS_R2_ENDPOINT_URL"] = "http://127.0.0.1:9000/"
    env["PIXELBUS_R2_TIMEOUT_S"] = "2.5"
    settings = StorageSettings.from_env(env)
    assert settings.r2 is not None
    assert settings.r2.endpoint_url == "http://127.0.0.1:9000"
    assert settings.r2.account_id is None
    assert settings.r2.timeout_s == 2.5


def test_r2_without_its_settings_names_every_missing_one_in_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({"STORAGE_PROVIDER": "r2"})
    message = str(caught.value)
    assert "\n" not in message
    for name in R2_REQUIRED:
        assert name in message
    assert "PIXELBUS_R2_ENDPOINT_URL" in message  # the alternative to R2_ACCOUNT_ID
    assert caught.value.settings == R2_REQUIRED


def test_blank_values_count_as_missing_and_only_missing_ones_are_named() -> None:
    env = {**R2_ENV, "R2_BUCKET": "  ", "R2_SECRET_ACCESS_KEY": ""}
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env(env)
    assert caught.value.settings == ("R2_SECRET_ACCESS_KEY", "R2_BUCKET")
    assert "R2_ACCESS_KEY_ID" not in str(caught.value)
    assert SECRET not in str(caught.value)


def test_malformed_and_missing_settings_are_reported_together() -> None:
    env = {
        **R2_ENV,
        "R2_PUBLIC_URL": "cdn.example.com",
        "R2_ACCOUNT_ID": "not/an.account",
        "PIXELBUS_R2_TIMEOUT_S": "soon",
    }
    del env["R2_BUCKET"]
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    assert set(caught.value.settings) == {
        "R2_BUCKET",
        "R2_PUBLIC_URL",
        "R2_ACCOUNT_ID",
        "PIXELBUS_R2_TIMEOUT_S",
    }
    assert "R2_PUBLIC_URL='cdn.example.com' is not an http(s) URL" in message


def test_a_bad_local_base_url_is_refused() -> None:
    with pytest.raises(SettingsError, match="PIXELBUS_PUBLIC_BASE_URL"):
        StorageSettings.from_env({"PIXELBUS_PUBLIC_BASE_URL": "localhost:8000"})


def test_an_unknown_provider_is_refused_with_the_choices() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({"STORAGE_PROVIDER": "s4"})
    assert str(caught.value) == "STORAGE_PROVIDER='s4' is not one of local, r2, gcs, cf_images"


def test_settings_errors_are_the_runtime_kind_and_value_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({"STORAGE_PROVIDER": "r2"})
    assert isinstance(caught.value, RuntimeSettingsError)
    assert isinstance(caught.value, ValueError)


def test_redacted_masks_the_secrets_and_names_settings_as_in_the_environment() -> None:
    settings = StorageSettings.from_env(R2_ENV)
    redacted = settings.redacted()
    assert redacted["R2_SECRET_ACCESS_KEY"] == "***"
    assert redacted["R2_ACCESS_KEY_ID"] == "***WXYZ"
    assert redacted["R2_BUCKET"] == "outputs"
    assert redacted["STORAGE_PROVIDER"] == "r2"
    assert all(SECRET not in value for value in redacted.values())
    assert all("AKIDEXAMPLE" not in value for value in redacted.values())
    assert SECRET not in repr(settings)


def test_redacted_local_settings_show_where_files_go() -> None:
    redacted = StorageSettings.from_env({"PIXELBUS_LOCAL_STORAGE_DIR": "/data"}).redacted()
    assert redacted == {
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": "/data",
        "PIXELBUS_PUBLIC_BASE_URL": DEFAULT_PUBLIC_BASE_URL,
        "PIXELBUS_STORAGE_RETRY_ATTEMPTS": "3",
    }
