from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixelbus.storage_uploader.errors import StoragePermanentError
from pixelbus.storage_uploader.providers import output_key, validate_key


def test_safe_names_are_kept_as_they_are() -> None:
    assert output_key("task_12345", "ComfyUI_00001_.png") == "tasks/task_12345/ComfyUI_00001_.png"


def test_unsafe_characters_are_replaced_and_the_extension_is_kept() -> None:
    key = output_key("task-1", "my photo (1).png")
    assert key.startswith("tasks/task-1/my_photo__1_-")
    assert key.endswith(".png")
    validate_key(key, "test")


def test_names_that_differ_only_in_unsafe_characters_get_different_keys() -> None:
    keys = {output_key("t", name) for name in ("a b.png", "a_b.png", "a?b.png", "a/b.png")}
    assert len(keys) == 4


@pytest.mark.parametrize("filename", ["..", ".", "../../etc/passwd", "/abs.png", ".hidden", ""])
def test_traversal_and_hidden_names_stay_one_segment_inside_the_task(filename: str) -> None:
    key = output_key("t", filename)
    segments = key.split("/")
    assert segments[:2] == ["tasks", "t"]
    assert len(segments) == 3
    assert not segments[2].startswith(".")
    validate_key(key, "test")


def test_long_names_are_bounded() -> None:
    key = output_key("t" * 300, "x" * 500 + ".webp")
    _, task, name = key.split("/")
    assert len(task) <= 128
    assert len(name) <= 128
    assert name.endswith(".webp")


@given(st.text(max_size=200), st.text(max_size=300))
def test_any_task_and_filename_give_a_valid_deterministic_key(task_id: str, filename: str) -> None:
    key = output_key(task_id, filename)
    validate_key(key, "test")
    assert len(key.split("/")) == 3
    assert output_key(task_id, filename) == key


@given(st.text(max_size=50), st.text(max_size=50))
def test_different_filenames_never_share_a_key(first: str, second: str) -> None:
    if first != second:
        assert output_key("t", first) != output_key("t", second)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "a/../b",
        "..",
        "a/./b",
        "a//b",
        "a\\b",
        "a b",
        "tasks/t/",
        "é",
        "x" * 1025,
    ],
)
def test_invalid_keys_are_refused(key: str) -> None:
    with pytest.raises(StoragePermanentError) as caught:
        validate_key(key, "local")
    assert caught.value.code == "invalid_key"
    assert caught.value.provider == "local"
    assert not caught.value.retryable


def test_a_name_shaped_like_a_changed_name_does_not_collide_with_it() -> None:
    changed = output_key("t", "a b.png").rsplit("/", 1)[1]  # e.g. a_b-<digest>.png
    assert output_key("t", changed) != output_key("t", "a b.png")
