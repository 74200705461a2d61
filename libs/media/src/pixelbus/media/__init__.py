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
    InvalidFileName,
    InvalidImage,
    InvalidUrl,
    MediaError,
    TooLarge,
    TooManyRedirects,
    UrlRefused,
)
from pixelbus.media.fetch import Fetched, FetchLimits, Resolver, fetch_bytes, system_resolver
from pixelbus.media.file_names import check_file_name, check_relative_path
from pixelbus.media.images import (
    ACCEPTED_FORMATS,
    ANIMATED_INPUTS_ENV,
    AnimatedInputs,
    EncodeFormat,
    RGBImage,
    animated_inputs_from,
    decode_image,
    encode_image,
    fit_within,
)
from pixelbus.media.ssrf import SsrfPolicy, is_forbidden_address, is_forbidden_host_name

__all__ = [
    "ACCEPTED_FORMATS",
    "ANIMATED_INPUTS_ENV",
    "AnimatedInputs",
    "BadDataUri",
    "BlockedUrl",
    "EncodeFormat",
    "FetchError",
    "FetchFailed",
    "FetchLimits",
    "FetchTimeout",
    "Fetched",
    "HttpStatusError",
    "InvalidFileName",
    "InvalidImage",
    "InvalidUrl",
    "MediaError",
    "RGBImage",
    "Resolver",
    "SsrfPolicy",
    "TooLarge",
    "TooManyRedirects",
    "UrlRefused",
    "animated_inputs_from",
    "check_file_name",
    "check_relative_path",
    "decode_image",
    "encode_image",
    "fetch_bytes",
    "fit_within",
    "is_forbidden_address",
    "is_forbidden_host_name",
    "system_resolver",
]
