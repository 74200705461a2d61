"""check_file_name and check_relative_path: names that could leave their folder are refused."""

from __future__ import annotations

import re

import pytest

from pixelbus.media import InvalidFileName, check_file_name, check_relative_path

ACCEPTED = [
    "ComfyUI_00001_.png",
    "photo.jpeg",
    "a b c.webp",
    ".hidden",
    "résumé été.png",
    "写真.png",
    "x" * 255,
    "v1.2.3.png",
]

REFUSED = [
    ("", "empty"),
    ("..", "'..'"),
    (".", "only dots"),
    ("...", "'..'"),
    (". .", "only dots"),
    ("../etc/passwd", "separator '/'"),
    ("a/b.png", "separator '/'"),
    ("/etc/passwd", "separator '/'"),
    ("..\\..\\windows\\win.ini", "separator '\\\\'"),
    ("C:evil.png", "separator ':'"),
    ("name.png:stream", "separator ':'"),
    ("a..b.png", "'..'"),
    ("..png", "'..'"),
    ("photo.png\x00.txt", "U+0000"),
    ("line\nbreak.png", "U+000A"),
    ("tab\t.png", "U+0009"),
    ("esc\x1b[31m.png", "U+001B"),
    ("del\x7f.png", "U+007F"),
    ("c1\x85.png", "U+0085"),
    ("gnp\u202e.exe", "U+202E"),
    ("zero\u200bwidth.png", "U+200B"),
    ("para\u2029.png", "U+2029"),
    ("x" * 256, "longer than 255 bytes"),
    ("é" * 128, "longer than 255 bytes"),
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepts_plain_names(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(("name", "reason"), REFUSED, ids=[repr(r[0][:20]) for r in REFUSED])
def test_refuses_unsafe_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidFileName, match=re.escape(reason)) as caught:
        check_file_name(name, what="filename")
    assert str(caught.value).startswith("filename")
    assert caught.value.code == "invalid_file_name"
    assert caught.value.retryable is False
    assert isinstance(caught.value, ValueError)  # request validators answer 422


@pytest.mark.parametrize("path", ["", "outputs", "outputs/2024/run-1", "a b/c"])
def test_relative_paths_of_safe_parts(path: str) -> None:
    assert check_relative_path(path, what="subfolder") == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc", "absolute"),
        ("a/../b", "'..'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\\b", "separator"),
        ("a/\x00", "U+0000"),
        ("..", "'..'"),
    ],
)
def test_relative_paths_refused(path: str, reason: str) -> None:
    with pytest.raises(InvalidFileName, match=re.escape(reason)):
        check_relative_path(path, what="subfolder")
