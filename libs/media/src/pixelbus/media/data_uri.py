"""Decoding ``data:`` URIs (RFC 2397), base64 only, within a byte limit."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote

from pixelbus.media.errors import BadDataUri, TooLarge, describe_url

__all__ = ["decode_data_uri", "is_data_uri"]

_WHITESPACE = re.compile(rb"[\t\n\f\r ]+")


def is_data_uri(url: str) -> bool:
    return url.lstrip()[:5].lower() == "data:"


def decode_data_uri(uri: str, *, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and the media type (None when absent) of a base64 ``data:`` URI.

    The length is checked before decoding, so an oversized URI costs no decoding."""
    label = describe_url(uri)
    header, comma, payload = uri.strip()[5:].partition(",")
    if not comma:
        raise BadDataUri(f"{label} has no ',' before its data")
    params = [p.strip().lower() for p in header.split(";")]
    if "base64" not in params[1:]:
        raise BadDataUri(f"{label} is not base64-encoded; only base64 data: URIs are accepted")
    max_encoded = 4 * -(-max_bytes // 3)
    if len(payload) > 2 * max_encoded + 1024:  # generous room for whitespace and %-escapes
        raise TooLarge(f"{label} holds more than {max_bytes} bytes")
    encoded = _WHITESPACE.sub(b"", unquote(payload).encode("ascii", "replace"))
    if len(encoded) > max_encoded:
        raise TooLarge(f"{label} holds more than {max_bytes} bytes")
    encoded += b"=" * (-len(encoded) % 4)
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise BadDataUri(f"{label} does not hold valid base64 data") from None
    if len(data) > max_bytes:
        raise TooLarge(f"{label} holds {len(data)} bytes, more than {max_bytes}")
    if not data:
        raise BadDataUri(f"{label} is empty")
    return data, params[0] or None
