"""Checking file names that come from outside (requests, ComfyUI's ``/history``) before
they are joined to a folder or passed on as a name: a pure check, no I/O.

``check_file_name`` accepts one name, never a path: no ``/`` or ``\\`` (nor ``:``, the
Windows drive and stream separator), no ``..`` anywhere, no NUL or other control or
invisible formatting characters, not only dots and spaces, at most 255 UTF-8 bytes.
``check_relative_path`` accepts a ``/``-separated relative path (a ComfyUI ``subfolder``)
whose every part passes ``check_file_name``.
"""

from __future__ import annotations

import unicodedata

from pixelbus.media.errors import InvalidFileName

__all__ = ["MAX_FILE_NAME_BYTES", "check_file_name", "check_relative_path"]

MAX_FILE_NAME_BYTES = 255
_SEPARATORS = ("/", "\\", ":")
_SHOWN = 80


def check_file_name(name: str, *, what: str = "file name") -> str:
    """``name`` itself when it is a safe single file name; raises InvalidFileName (also a
    ValueError, so request validators turn it into a 422) saying why not."""
    shown = repr(name[:_SHOWN])
    if not name:
        raise InvalidFileName(f"{what} is empty")
    for separator in _SEPARATORS:
        if separator in name:
            raise InvalidFileName(f"{what} {shown} contains a path separator {separator!r}")
    if ".." in name:
        raise InvalidFileName(f"{what} {shown} contains '..'")
    for character in name:
        if unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidFileName(
                f"{what} {shown} contains the control character U+{ord(character):04X}"
            )
    if not name.strip(". "):
        raise InvalidFileName(f"{what} {shown} is only dots and spaces")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise InvalidFileName(f"{what} {shown}... is longer than {MAX_FILE_NAME_BYTES} bytes")
    return name


def check_relative_path(path: str, *, what: str = "path") -> str:
    """``path`` itself when it is empty or a relative ``/``-separated path whose every part
    is a safe file name (no absolute path, no empty part, no ``..``)."""
    if path == "":
        return path
    if path.startswith("/"):
        raise InvalidFileName(f"{what} {path[:_SHOWN]!r} is absolute")
    for part in path.split("/"):
        check_file_name(part, what=f"a part of {what} {path[:_SHOWN]!r}:")
    return path
