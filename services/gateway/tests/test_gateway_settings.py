"""The gateway's settings from the environment: production refuses what is only safe on a
developer's machine, each refusal names its setting, and secrets never reach the log."""

from __future__ import annotations

import pytest

from pixelbus.gateway.settings import GatewaySettings
from pixelbus.runtime.errors import SettingsError


def test_development_defaults_are_open_and_unlimited_with_a_random_lease_secret() -> None:
    one, two = GatewaySettings.from_env({}), GatewaySettings.from_env({})
    assert one.app_env == "development" and one.auth_open
    assert one.rate_limit_rps == 0.0 and one.max_active_tasks == 0
    assert len(one.lease_secret) == 64 and one.lease_secret != two.lease_secret


def test_production_requires_keys_and_limits_them_by_default() -> None:
    settings = GatewaySettings.from_env({"APP_ENV": "production", "PIXELBUS_LEASE_SECRET": "s"})
    assert not settings.auth_open
    assert settings.rate_limit_rps == 20.0 and settings.max_active_tasks == 100
    assert settings.lease_secret == "s"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"APP_ENV": "production"}, "PIXELBUS_LEASE_SECRET"),
        (
            {"APP_ENV": "production", "PIXELBUS_LEASE_SECRET": "s", "PIXELBUS_AUTH": "open"},
            "PIXELBUS_AUTH",
        ),
        ({"PIXELBUS_AUTH": "maybe"}, "PIXELBUS_AUTH"),
        ({"PIXELBUS_PORT": "70000"}, "PIXELBUS_PORT"),
        ({"PIXELBUS_MAX_CONCURRENT_REQUESTS": "0"}, "PIXELBUS_MAX_CONCURRENT_REQUESTS"),
        ({"PIXELBUS_MAX_BODY_BYTES": "lots"}, "PIXELBUS_MAX_BODY_BYTES"),
        ({"PIXELBUS_SSRF_ALLOW_NETWORKS": "10.0.0.0/8,not-a-net"}, "PIXELBUS_SSRF_ALLOW_NETWORKS"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        GatewaySettings.from_env(environ)


def test_lists_are_read_trimmed_and_without_empty_items() -> None:
    settings = GatewaySettings.from_env(
        {
            "PIXELBUS_CORS_ORIGINS": " https://a.example , ,https://b.example",
            "PIXELBUS_SSRF_ALLOW_NETWORKS": "127.0.0.1/8, ::1/128",
        }
    )
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    # host bits are allowed (strict=False): 127.0.0.1/8 is the network 127.0.0.0/8
    assert [str(n) for n in settings.ssrf_allow_networks] == ["127.0.0.0/8", "::1/128"]


def test_the_logged_settings_hide_the_lease_secret_and_nats_credentials() -> None:
    settings = GatewaySettings.from_env(
        {"PIXELBUS_LEASE_SECRET": "top-secret", "NATS_URL": "nats://user:pw@nats:4222"}
    )
    shown = repr(settings.redacted())
    assert "top-secret" not in shown and "pw" not in shown
    assert settings.redacted()["NATS_URL"] == "nats://***@nats:4222"
