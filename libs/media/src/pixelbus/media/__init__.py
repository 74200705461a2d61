"""pixelbus.media: fetch user-supplied image URLs safely and decode them safely.

``fetch_bytes`` refuses URLs that lead to private networks or cloud metadata (see
``ssrf``), caps size and time, and follows redirects by hand; ``open_image`` decodes
untrusted bytes within bounds (Pillow: the ``images`` extra) and ``decode_image`` turns
them into an upright RGB array (numpy too: the ``arrays`` extra). Every failure is a
``MediaError`` that says whether a retry may help.

The image names are imported on first use, so that a service without the extras (the
gateway, the webhook sender: SSRF guard and data URIs only) can import this package.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
from pixelbus.media.ssrf import SsrfPolicy, is_forbidden_address, is_forbidden_host_name

if TYPE_CHECKING:
    from pixelbus.media.arrays import (
        EncodeFormat,
        RGBImage,
        decode_image,
        encode_image,
        fit_within,
    )
    from pixelbus.media.images import (
        ACCEPTED_FORMATS,
        ANIMATED_INPUTS_ENV,
        AnimatedInputs,
        animated_inputs_from,
        open_image,
    )

_LAZY = {
    "ACCEPTED_FORMATS": "images",
    "ANIMATED_INPUTS_ENV": "images",
    "AnimatedInputs": "images",
    "animated_inputs_from": "images",
    "open_image": "images",
    "EncodeFormat": "arrays",
    "RGBImage": "arrays",
    "decode_image": "arrays",
    "encode_image": "arrays",
    "fit_within": "arrays",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"pixelbus.media.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pixelbus.media' has no attribute {name!r}")


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
    "open_image",
    "system_resolver",
]
