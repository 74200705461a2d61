"""pixelbus.media: fetch user-supplied image URLs safely and decode them safely.

``fetch_bytes`` refuses URLs that lead to private networks or cloud metadata (see
``ssrf``), caps size and time, and follows redirects by hand; ``decode_image`` turns
untrusted bytes into an upright RGB array. Every failure is a ``MediaError`` that says
whether a retry may help.
"""

from pixelbus.media.errors import (
    BadDataUri,
    BlockedUrl,
    FetchError,
    FetchFailed,
    FetchTimeout,
    HttpStatusError,
    InvalidImage,
    InvalidUrl,
    MediaError,
    TooLarge,
    TooManyRedirects,
    UrlRefused,
)
from pixelbus.media.fetch import Fetched, FetchLimits, Resolver, fetch_bytes, system_resolver
from pixelbus.media.images import (
    ACCEPTED_FORMATS,
    EncodeFormat,
    RGBImage,
    decode_image,
    encode_image,
    fit_within,
)
from pixelbus.media.ssrf import SsrfPolicy, is_forbidden_address, is_forbidden_host_name

__all__ = [
    "ACCEPTED_FORMATS",
    "BadDataUri",
    "BlockedUrl",
    "EncodeFormat",
    "FetchError",
    "FetchFailed",
    "FetchLimits",
    "FetchTimeout",
    "Fetched",
    "HttpStatusError",
    "InvalidImage",
    "InvalidUrl",
    "MediaError",
    "RGBImage",
    "Resolver",
    "SsrfPolicy",
    "TooLarge",
    "TooManyRedirects",
    "UrlRefused",
    "decode_image",
    "encode_image",
    "fetch_bytes",
    "fit_within",
    "is_forbidden_address",
    "is_forbidden_host_name",
    "system_resolver",
]
