"""V4 signed GET URLs for Cloud Storage (``GOOG4-RSA-SHA256``), pure apart from signing.

The string to sign is built here from plain values (the clock passed in); the signature
comes from a ``Signer``: the service account's private key, or the IAM ``signBlob`` API
for credentials without one (workload identity).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import quote, urlsplit

__all__ = ["Signer", "signed_url", "string_to_sign"]

Signer = Callable[[bytes], Awaitable[bytes]]

_ALGORITHM = "GOOG4-RSA-SHA256"


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(params.items()))


def string_to_sign(
    *, base_url: str, bucket: str, key: str, email: str, now: datetime, expires_s: int
) -> tuple[str, str]:
    """``(string to sign, URL without its signature)`` for a GET of ``bucket/key``."""
    parts = urlsplit(base_url)
    host = parts.netloc
    path = f"{parts.path.rstrip('/')}/{bucket}/{quote(key, safe='/~')}"
    timestamp = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{now.strftime('%Y%m%d')}/auto/storage/goog4_request"
    query = _query(
        {
            "X-Goog-Algorithm": _ALGORITHM,
            "X-Goog-Credential": f"{email}/{scope}",
            "X-Goog-Date": timestamp,
            "X-Goog-Expires": str(expires_s),
            "X-Goog-SignedHeaders": "host",
        }
    )
    canonical = "\n".join(["GET", path, query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = "\n".join([_ALGORITHM, timestamp, scope, digest])
    return to_sign, f"{parts.scheme}://{host}{path}?{query}"


async def signed_url(
    signer: Signer,
    *,
    base_url: str,
    bucket: str,
    key: str,
    email: str,
    now: datetime,
    expires_s: int,
) -> str:
    to_sign, unsigned = string_to_sign(
        base_url=base_url, bucket=bucket, key=key, email=email, now=now, expires_s=expires_s
    )
    signature = await signer(to_sign.encode())
    return f"{unsigned}&X-Goog-Signature={signature.hex()}"
