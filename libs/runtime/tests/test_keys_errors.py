"""``KeyManagementError`` is a ``PixelbusError`` (code ``key_management``, not retryable),
raised before the bucket is touched when a key request is refused."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pixelbus.contracts.errors import PixelbusError
from pixelbus.runtime.keys import KeyManagementError, create_key

NO_BUS = cast(Any, None)  # the refusals come before any JetStream call


def test_key_management_error_is_a_pixelbus_error() -> None:
    error = KeyManagementError("no API key 'k1'")
    assert isinstance(error, PixelbusError)
    assert (error.code, error.retryable, error.message) == (
        "key_management",
        False,
        "no API key 'k1'",
    )
    assert str(error) == "no API key 'k1'"


@pytest.mark.parametrize(
    ("owner", "scopes", "words"),
    [
        ("acme", ["nonsense"], "scopes must be among"),
        ("acme", [], "scopes must be among"),
        ("acme corp", ["tasks:read"], "use letters, digits"),
    ],
)
async def test_refused_key_requests(owner: str, scopes: list[str], words: str) -> None:
    with pytest.raises(KeyManagementError, match=words) as caught:
        await create_key(NO_BUS, name="n", owner=owner, scopes=scopes)
    assert caught.value.code == "key_management"
