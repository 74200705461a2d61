from __future__ import annotations

import json
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
        "PIXELBUS_LOCAL_FSYNC": "false",
        "PIXELBUS_STORAGE_RETRY_ATTEMPTS": "3",
        "PIXELBUS_STORAGE_RETRY_BASE_S": "0.5",
        "PIXELBUS_STORAGE_RETRY_MAX_S": "8",
        "PIXELBUS_STORAGE_HEALTH_INTERVAL_S": "30",
    }


def test_local_fsync_is_off_by_default_and_a_bad_value_is_named() -> None:
    assert StorageSettings.from_env({}).local.fsync is False  # type: ignore[union-attr]
    on = StorageSettings.from_env({"PIXELBUS_LOCAL_FSYNC": "true"})
    assert on.local is not None and on.local.fsync is True
    with pytest.raises(SettingsError, match="PIXELBUS_LOCAL_FSYNC"):
        StorageSettings.from_env({"PIXELBUS_LOCAL_FSYNC": "sometimes"})


def test_r2_without_a_public_url_means_presigned_urls_with_a_bounded_lifetime() -> None:
    env = {k: v for k, v in R2_ENV.items() if k != "R2_PUBLIC_URL"}
    settings = StorageSettings.from_env({**env, "PIXELBUS_R2_URL_TTL_S": "3600"})
    assert settings.r2 is not None
    assert (settings.r2.public_url, settings.r2.url_ttl_s) == (None, 3600)
    assert "presigned" in settings.redacted()["R2_PUBLIC_URL"]
    with pytest.raises(SettingsError, match="PIXELBUS_R2_URL_TTL_S") as caught:
        StorageSettings.from_env({**env, "PIXELBUS_R2_URL_TTL_S": str(8 * 24 * 3600)})
    assert caught.value.settings == ("PIXELBUS_R2_URL_TTL_S",)


def test_r2_parts_must_be_at_least_the_s3_minimum() -> None:
    with pytest.raises(SettingsError, match="PIXELBUS_R2_PART_SIZE"):
        StorageSettings.from_env({**R2_ENV, "PIXELBUS_R2_PART_SIZE": str(4 * 1024 * 1024)})
    settings = StorageSettings.from_env({**R2_ENV, "PIXELBUS_R2_PART_SIZE": "16777216"})
    assert settings.r2 is not None and settings.r2.part_size == 16 * 1024 * 1024


def service_account_file(tmp_path: Path, **fields: str) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"type": "service_account", **fields}))
    return path


def test_gcs_settings_with_a_key_file_sign_urls(tmp_path: Path) -> None:
    key = service_account_file(
        tmp_path, client_email="sa@p.iam.gserviceaccount.com", private_key=SECRET
    )
    settings = StorageSettings.from_env(
        {
            "STORAGE_PROVIDER": "gcs",
            "PIXELBUS_GCS_BUCKET": "pixelbus-outputs",
            "GOOGLE_APPLICATION_CREDENTIALS": str(key),
        }
    )
    gcs = settings.gcs
    assert gcs is not None and settings.r2 is None and settings.local is None
    assert (gcs.bucket, gcs.credentials_file, gcs.public_url) == ("pixelbus-outputs", key, None)
    assert (gcs.api_url, gcs.emulator) == ("https://storage.googleapis.com", False)
    assert gcs.credentials["client_email"] == "sa@p.iam.gserviceaccount.com"
    redacted = settings.redacted()
    assert SECRET not in repr(settings) and all(SECRET not in v for v in redacted.values())
    assert redacted["GOOGLE_APPLICATION_CREDENTIALS"] == str(key)


def test_gcs_without_a_way_to_make_urls_names_the_settings_in_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({"STORAGE_PROVIDER": "gcs"})
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.settings == ("PIXELBUS_GCS_BUCKET", "PIXELBUS_GCS_SIGNER_EMAIL")
    assert "PIXELBUS_GCS_PUBLIC_URL" in message  # the simplest fix is named


def test_gcs_on_workload_identity_with_public_urls_needs_no_key() -> None:
    settings = StorageSettings.from_env(
        {
            "STORAGE_PROVIDER": "gcs",
            "PIXELBUS_GCS_BUCKET": "pixelbus-outputs",
            "PIXELBUS_GCS_PUBLIC_URL": "https://storage.googleapis.com/pixelbus-outputs/",
            "STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443",
        }
    )
    assert settings.gcs is not None
    assert settings.gcs.credentials_file is None
    assert settings.gcs.public_url == "https://storage.googleapis.com/pixelbus-outputs"
    assert (settings.gcs.api_url, settings.gcs.emulator) == ("http://127.0.0.1:4443", True)


def test_an_unreadable_credentials_file_is_a_bad_setting(tmp_path: Path) -> None:
    env = {"STORAGE_PROVIDER": "gcs", "PIXELBUS_GCS_BUCKET": "pixelbus-outputs"}
    with pytest.raises(SettingsError, match="cannot be read") as caught:
        StorageSettings.from_env({**env, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no")})
    assert caught.value.settings == ("GOOGLE_APPLICATION_CREDENTIALS",)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(SettingsError, match="not a Google credentials file"):
        StorageSettings.from_env(
            {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "list.json")}
        )


CF_ENV = {
    "STORAGE_PROVIDER": "cf_images",
    "CLOUDFLARE_ACCOUNT_ID": "0123456789abcdef0123456789abcdef",
    "CLOUDFLARE_API_TOKEN": SECRET,
}


def test_cf_images_settings_default_to_the_public_variant_and_no_fallback() -> None:
    settings = StorageSettings.from_env(CF_ENV)
    cf = settings.cf_images
    assert cf is not None
    assert (cf.variant, cf.fallback, cf.api_url) == (
        "public",
        None,
        "https://api.cloudflare.com/client/v4",
    )
    assert settings.redacted()["CLOUDFLARE_API_TOKEN"] == "***"
    assert SECRET not in repr(settings)


def test_cf_images_without_its_settings_names_them_in_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({"STORAGE_PROVIDER": "cf_images"})
    assert caught.value.settings == ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN")
    assert "\n" not in str(caught.value)


def test_a_cf_images_fallback_needs_its_own_settings_too() -> None:
    with pytest.raises(SettingsError) as caught:
        StorageSettings.from_env({**CF_ENV, "PIXELBUS_CF_IMAGES_FALLBACK": "r2"})
    assert set(caught.value.settings) == set(R2_REQUIRED)
    settings = StorageSettings.from_env(
        {**CF_ENV, **R2_ENV, "STORAGE_PROVIDER": "cf_images", "PIXELBUS_CF_IMAGES_FALLBACK": "R2"}
    )
    assert settings.cf_images is not None and settings.cf_images.fallback == "r2"
    assert settings.r2 is not None and settings.r2.bucket == "outputs"


@pytest.mark.parametrize("fallback", ["cf_images", "s3"])
def test_an_impossible_fallback_is_refused(fallback: str) -> None:
    with pytest.raises(SettingsError, match="PIXELBUS_CF_IMAGES_FALLBACK"):
        StorageSettings.from_env({**CF_ENV, "PIXELBUS_CF_IMAGES_FALLBACK": fallback})
