"""Pure reading of ComfyUI's answers and messages, and the progress fold."""

from __future__ import annotations

import struct

from pixelbus.comfy_worker.errors import PromptRejected
from pixelbus.comfy_worker.progress import ProgressTracker
from pixelbus.comfy_worker.protocol import (
    Message,
    content_type_of,
    execution_failure,
    parse_frame,
    parse_history,
    place_in_queue,
    rejection,
)


def test_unknown_node_class_names_the_node_from_details() -> None:
    body = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNodeClass does not exist.",
            "details": "Node ID '#2'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    error = rejection(400, body, "")
    assert isinstance(error, PromptRejected)
    assert error.node_id == "2"
    assert "NoSuchNodeClass does not exist" in error.message
    assert "Node ID '#2'" in error.message


def test_validation_errors_list_every_node_with_comfyuis_words() -> None:
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
        },
        "node_errors": {
            "5": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "crop: 'x' not in ['disabled']",
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": "ImageScale",
            },
            "7": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "images",
                    }
                ],
                "dependent_outputs": ["7"],
                "class_type": "SaveImage",
            },
        },
    }
    error = rejection(400, body, "")
    assert error.node_id == "5"
    assert "node 5 (ImageScale): Value not in list: crop: 'x' not in ['disabled']" in error.message
    assert "node 7 (SaveImage): Required input is missing: images" in error.message


def test_plain_text_500_refusal_is_kept_readable() -> None:
    error = rejection(500, None, "500 Internal Server Error")
    assert "HTTP 500" in error.message and error.node_id is None


def test_execution_error_names_node_type_exception_and_message() -> None:
    error = execution_failure(
        {
            "node_id": "2",
            "node_type": "ImageInvert",
            "exception_type": "RuntimeError",
            "exception_message": "boom\n",
        }
    )
    assert error.message == "node 2 (ImageInvert) raised RuntimeError: boom"
    assert error.node_id == "2"


def test_history_keeps_every_output_kind_files_and_values() -> None:
    body = {
        "p1": {
            "prompt": [0, "p1", {}, {}, ["3"]],
            "outputs": {
                "3": {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"}]},
                "4": {
                    "images": [{"filename": "b.webp", "subfolder": "", "type": "output"}],
                    "animated": [True],
                },
                "5": {
                    "gifs": [
                        {
                            "filename": "c.mp4",
                            "subfolder": "",
                            "type": "output",
                            "format": "video/h264-mp4",
                        }
                    ]
                },
                "6": {"text": ["hello"]},
                "7": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]},
            },
            "status": {
                "status_str": "success",
                "completed": True,
                "messages": [["execution_start", {"prompt_id": "p1"}]],
            },
        }
    }
    entry = parse_history(body, "p1")
    assert entry is not None and entry.status == "success"
    assert [(f.node_id, f.kind, f.filename, f.type) for f in entry.files] == [
        ("3", "images", "a.png", "output"),
        ("4", "images", "b.webp", "output"),
        ("5", "gifs", "c.mp4", "output"),
        ("7", "images", "t.png", "temp"),
    ]
    assert entry.values == {"4": {"animated": [True]}, "6": {"text": ["hello"]}}
    assert [f.content_type for f in entry.files[:3]] == ["image/png", "image/webp", "video/mp4"]
    assert entry.message("execution_start") == {"prompt_id": "p1"}
    assert parse_history({}, "p1") is None


def test_queue_place_reads_running_and_pending() -> None:
    body = {
        "queue_running": [[3, "a", {}, {}, []]],
        "queue_pending": [[5, "c", {}, {}, []], [4, "b", {}, {}, []]],
    }
    assert place_in_queue(body, "a") == "running"
    assert place_in_queue(body, "c") == "pending"
    assert place_in_queue(body, "z") is None


def test_frames_text_binary_and_garbage() -> None:
    message = parse_frame('{"type": "executing", "data": {"node": "3", "prompt_id": "p"}}')
    assert message == Message("executing", {"node": "3", "prompt_id": "p"})
    assert message.prompt_id == "p"
    binary = parse_frame(struct.pack(">II", 1, 1) + b"\xff\xd8")
    assert binary is not None and binary.type == "binary" and binary.data["event"] == 1
    assert parse_frame("not json") is None
    assert parse_frame(b"\x00") is None


def test_content_types_of_comfy_outputs() -> None:
    assert content_type_of("x.latent") == "application/octet-stream"
    assert content_type_of("x.webm") == "video/webm"
    assert content_type_of("X.JPG") == "image/jpeg"
    assert content_type_of("noext") == "application/octet-stream"


def _msg(kind: str, **data: object) -> Message:
    return Message(kind, {"prompt_id": "p", **data})


def test_progress_counts_cached_nodes_steps_and_never_goes_back() -> None:
    tracker = ProgressTracker(
        {"1": "EmptyImage", "2": "KSampler", "3": "SaveImage", "4": "ImageInvert"}
    )
    fractions = []
    for message in [
        _msg("execution_start"),
        _msg("execution_cached", nodes=["1"]),
        _msg("executing", node="2"),
        _msg("progress", node="2", value=5, max=10),
        _msg("progress", node="2", value=10, max=10),
        _msg("executing", node="4"),
        _msg("executing", node="3"),
        _msg("executed", node="3", output={}),
        _msg("execution_success"),
    ]:
        snapshot = tracker.apply(message)
        assert snapshot is not None
        fractions.append(snapshot.fraction)
    assert fractions == [0.0, 0.25, 0.25, 0.375, 0.5, 0.5, 0.75, 1.0, 1.0]
    assert tracker.apply(_msg("executing", node=None)) is None
    snapshot = ProgressTracker({"2": "KSampler"}).apply(_msg("progress", node="2", value=1, max=4))
    assert snapshot is not None and snapshot.node == "2" and "KSampler" in snapshot.message
