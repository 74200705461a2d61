"""Errors raised by pixelbus.media (all ``pixelbus.contracts.errors.PixelbusError``).

Every error says whether trying again later could help (``retryable``) and carries a
stable machine-readable ``code``; messages name the URL's host, never a whole URL
(a ``data:`` URI is described by its media type and length only)::

    MediaError
    ├── UrlRefused                 permanent: the URL is never fetched
    │   ├── InvalidUrl             invalid_url     malformed URL, host or redirect
    │   └── BlockedUrl             ssrf_blocked    scheme, userinfo, host name or address
    ├── FetchError                 fetching failed
    │   ├── BadDataUri             bad_data_uri    permanent
    │   ├── TooLarge               too_large       permanent
    │   ├── TooManyRedirects       too_many_redirects  permanent
    │   ├── HttpStatusError        fetch_http_error    retryable for 408, 425, 429 and 5xx
    │   ├── FetchTimeout           fetch_timeout   retryable
    │   └── FetchFailed            fetch_failed    connection or DNS failure; retryable
    │                                              unless the host name does not exist or
    │                                              its TLS certificate does not verify
    ├── InvalidImage               invalid_image   permanent: not an acceptable image
    ├── InvalidVideo               invalid_video   permanent: not a video, truncated or
    │                                              damaged, no video stream, no frames
    ├── VideoTooLarge              video_too_large permanent: over a PIXELBUS_VIDEO_* limit
    │                                              (bytes, duration, frames or pixels)
    └── InvalidFileName            invalid_file_name  permanent; also a ValueError
"""

from __future__ import annotations

from pixelbus.contracts.errors import PixelbusError

__all__ = [
    "BadDataUri",
    "BlockedUrl",
    "FetchError",
    "FetchFailed",
    "FetchTimeout",
    "HttpStatusError",
    "InvalidFileName",
    "InvalidImage",
    "InvalidUrl",
    "InvalidVideo",
    "MediaError",
    "TooLarge",
    "TooManyRedirects",
    "UrlRefused",
    "VideoTooLarge",
    "describe_url",
]

_DATA_URI_PREVIEW = 40


def describe_url(url: str) -> str:
    """A short, safe label for a URL in messages and logs: its host, or for a ``data:``
    URI its media type and length (its payload is never repeated)."""
    stripped = url.strip()
    if stripped[:5].lower() == "data:":
        header = stripped[5:].split(",", 1)[0][:_DATA_URI_PREVIEW]
        media_type = header.split(";", 1)[0] or "text/plain"
        return f"a data: URI ({media_type}, {len(stripped)} characters)"
    scheme, sep, rest = stripped.partition("://")
    if not sep:
        return repr(stripped[:_DATA_URI_PREVIEW])
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = authority.rpartition("@")[2]
    host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    return f"host {host[:100]!r}" if host else f"a {scheme[:10]}: URL"


class MediaError(PixelbusError):
    """Base of every error raised by pixelbus.media."""

    code = "media_error"


class UrlRefused(MediaError):
    """The URL is refused before any network activity."""


class InvalidUrl(UrlRefused):
    code = "invalid_url"


class BlockedUrl(UrlRefused):
    """The scheme, userinfo, host name or an address of the host is not allowed."""

    code = "ssrf_blocked"


class FetchError(MediaError):
    """Fetching a URL failed."""


class BadDataUri(FetchError):
    code = "bad_data_uri"


class TooLarge(FetchError):
    code = "too_large"


class TooManyRedirects(FetchError):
    code = "too_many_redirects"


class HttpStatusError(FetchError):
    """The server answered with an error status."""

    code = "fetch_http_error"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message, retryable=is_retryable_status(status_code))
        self.status_code = status_code


class FetchTimeout(FetchError):
    code = "fetch_timeout"
    retryable = True


class FetchFailed(FetchError):
    code = "fetch_failed"
    retryable = True


class InvalidImage(MediaError):
    code = "invalid_image"


class InvalidVideo(MediaError):
    """Not an MP4, MOV, WebM or MKV video, or one that cannot be read: truncated, damaged,
    without a video stream or without frames."""

    code = "invalid_video"


class VideoTooLarge(MediaError):
    """The video is over one of the limits; the message names its setting."""

    code = "video_too_large"


def is_retryable_status(status_code: int) -> bool:
    """Server errors and throttling may pass; other client errors will not."""
    return status_code >= 500 or status_code in (408, 425, 429)


class InvalidFileName(MediaError, ValueError):
    """A file-name input holds a path separator, ``..``, a control character or the like."""

    code = "invalid_file_name"
