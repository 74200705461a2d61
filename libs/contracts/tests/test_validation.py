"""Request validation names the offending field; subjects are safe tokens."""

from __future__ import annotations

import json

import msgspec
import pytest

from pixelbus.contracts.face_swap import parse_resolution
from pixelbus.contracts.subjects import (
    event_filter,
    input_object_names,
    pool_for_environment,
    sanitize_token,
    task_subject,
)
from pixelbus.contracts.validation import (
    ValidationFailed,
    decode_create_request,
    validate_create,
)


def create(body: dict[str, object]):  # type: ignore[no-untyped-def]
    return validate_create(decode_create_request(json.dumps(body).encode()))


def locs(exc: pytest.ExceptionInfo[ValidationFailed]) -> list[tuple[object, ...]]:
    return [e.loc for e in exc.value.errors]


FACE = {"source_url": "https://example.com/s.jpg", "target_url": "https://example.com/t.jpg"}


def test_face_swap_task_in_unified_format() -> None:
    spec = create({"workflow": "face_swap", "params": {"input_data": {"wf_json": FACE}}})
    assert spec.workflow == "face_swap" and spec.environment == "face_swap"
    assert spec.input_data["wf_json"]["target_url"] == FACE["target_url"]


def test_workflow_name_is_an_alias() -> None:
    spec = create({"workflow_name": "face_swap", "params": {"input_data": {"wf_json": FACE}}})
    assert spec.workflow == "face_swap"


def test_missing_target_url_names_the_field() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "workflow": "face_swap",
                "params": {"input_data": {"wf_json": {"source_url": FACE["source_url"]}}},
            }
        )
    assert ("body", "params", "input_data", "wf_json", "target_url") in locs(exc)
    assert exc.value.errors[0].type == "missing"


def test_both_urls_missing_names_both() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create({"workflow": "face_swap", "params": {"input_data": {"wf_json": {}}}})
    names = {loc[-1] for loc in locs(exc)}
    assert names == {"source_url", "target_url"}


@pytest.mark.parametrize(
    "url", ["ftp://x/y.jpg", "file:///etc/passwd", "javascript:alert(1)", "data:image/png,raw"]
)
def test_bad_url_schemes_are_refused(url: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "workflow": "face_swap",
                "params": {"input_data": {"wf_json": {**FACE, "source_url": url}}},
            }
        )
    assert locs(exc) == [("body", "params", "input_data", "wf_json", "source_url")]


def test_data_uri_is_accepted() -> None:
    spec = create(
        {
            "workflow": "face_swap",
            "params": {
                "input_data": {"wf_json": {**FACE, "source_url": "data:image/png;base64,AAAA"}}
            },
        }
    )
    assert spec.input_data["wf_json"]["source_url"].startswith("data:")


@pytest.mark.parametrize(
    ("value", "expected"), [("1024x1024", (1024, 1024)), (" 640 X 480 ", (640, 480))]
)
def test_resolution_parses(value: str, expected: tuple[int, int]) -> None:
    assert parse_resolution(value) == expected


@pytest.mark.parametrize("value", ["big", "1024", "0x100", "100000x100", "10x10", "-5x10"])
def test_bad_resolution_names_the_field(value: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "workflow": "face_swap",
                "params": {"input_data": {"wf_json": {**FACE, "resolution": value}}},
            }
        )
    assert locs(exc) == [("body", "params", "input_data", "wf_json", "resolution")]


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "workflow": "face_swap",
                "params": {"input_data": {"wf_json": {**FACE, "model": "nope"}}},
            }
        )
    assert "inswapper_128_fp16" in exc.value.errors[0].msg


def test_unknown_top_level_field_is_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {"workflow": "face_swap", "owner": "me", "params": {"input_data": {"wf_json": FACE}}}
        )
    assert locs(exc) == [("body", "owner")]


def test_status_other_than_pending_is_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "workflow": "face_swap",
                "status": "COMPLETED",
                "params": {"input_data": {"wf_json": FACE}},
            }
        )
    assert locs(exc) == [("body", "status")]


def test_bad_task_id_and_environment() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(
            {
                "taskId": "a.b c",
                "workflow": "x",
                "environment": "mars",
                "params": {"input_data": {"wf_json": {}}},
            }
        )
    assert set(locs(exc)) == {("body", "taskId"), ("body", "environment")}


def test_comm_task_needs_a_graph() -> None:
    with pytest.raises(ValidationFailed) as exc:
        create({"workflow": "txt2img", "environment": "comm", "params": {"input_data": {}}})
    assert locs(exc) == [("body", "params", "input_data", "wf_json")]


def test_probe_needs_nothing() -> None:
    spec = create({"workflow": "probe", "environment": "comm"})
    assert spec.workflow == "probe" and spec.environment == "comm"


def test_invalid_json_is_reported() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_create_request(b"{not json")
    assert exc.value.errors[0].type == "json_invalid"


@pytest.mark.parametrize(
    ("raw", "token"), [("a.b", "a_b"), ("x*y>z", "x_y_z"), ("sp ace", "sp_ace"), ("", "_")]
)
def test_tokens_are_sanitised(raw: str, token: str) -> None:
    assert sanitize_token(raw) == token


def test_subjects() -> None:
    assert (
        task_subject("comm", "my.flow", "created", "t1") == "pixelbus.tasks.comm.my_flow.created.t1"
    )
    assert event_filter("completed") == "pixelbus.tasks.*.*.completed.*"
    assert (
        pool_for_environment("face_swap").filter_subject == "pixelbus.tasks.face_swap.*.created.*"
    )


def test_input_object_names_found_at_any_depth_once() -> None:
    input_data = {
        "wf_json": {
            "source_url": "pixelbus-object:inputs/t1/source_url",
            "target_url": "https://example.com/a.png",
            "3": {"inputs": {"image": "pixelbus-object:inputs/t1/node3"}},
            "list": ["pixelbus-object:inputs/t1/source_url", 7, None],
        }
    }
    assert input_object_names(input_data) == ("inputs/t1/source_url", "inputs/t1/node3")
    assert input_object_names({"wf_json": {"source_url": "data:image/png;base64,xx"}}) == ()


def face_swap(**extra: object):  # type: ignore[no-untyped-def]
    return create(
        {"workflow": "face_swap", "params": {"input_data": {"wf_json": {**FACE, **extra}}}}
    )


def test_face_swap_options_are_kept_and_normalised() -> None:
    spec = face_swap(
        source_face_index=0,
        target_face_index="many",
        face_order="large-small",
        output_format="JPG",
        quality=80,
        enhancer="gfpgan_1.4",
        enhancer_blend=0.6,
        model="inswapper_128_fp16",
    )
    wf = spec.input_data["wf_json"]
    assert wf["output_format"] == "jpeg"
    assert (wf["source_face_index"], wf["target_face_index"], wf["quality"]) == (0, "many", 80)
    assert face_swap(model="remote").input_data["wf_json"]["model"] == "remote"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_face_index", -1),
        ("source_face_index", "many"),
        ("target_face_index", 1.5),
        ("target_face_index", True),
        ("face_order", "random"),
        ("output_format", "gif"),
        ("quality", 101),
        ("enhancer", "codeformer"),
        ("enhancer_blend", 2),
    ],
)
def test_bad_face_swap_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationFailed) as exc:
        face_swap(**{field: value})
    assert locs(exc) == [("body", "params", "input_data", "wf_json", field)]


def test_a_face_swap_body_refuses_unknown_fields_and_names_every_bad_one() -> None:
    from pixelbus.contracts.validation import decode_face_swap_request, validate_face_swap_fields

    body = {**FACE, "target_face_index": 2, "output_format": "WEBP"}
    fields = decode_face_swap_request(json.dumps(body).encode())
    assert validate_face_swap_fields(fields, ("body",), strict=True) == {
        **body,
        "output_format": "webp",
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_face_swap_fields(
            {**FACE, "quality": 0, "face_order": "random", "owner": "me"}, ("body",), strict=True
        )
    assert sorted(locs(exc)) == [("body", "face_order"), ("body", "owner"), ("body", "quality")]
    # wf_json of the unified format keeps keys it does not know (older clients send some)
    assert validate_face_swap_fields({**FACE, "extra": 1}, ("wf",))["extra"] == 1


def test_the_typed_options_carry_the_constraints_and_the_messages() -> None:
    """One definition: the constraint rejects, its description is the message, and the
    JSON schema (the OpenAPI of the face-swap body) shows both."""
    from pixelbus.contracts.face_swap import FaceSwapOptions, check_face_swap_options

    options, errors = check_face_swap_options(
        {"target_face_index": 1001, "enhancer_blend": 0.25, "resolution": " 800 X 600 "}
    )
    assert list(errors) == ["target_face_index"]
    assert "0 to 1000" in errors["target_face_index"]
    assert (options.enhancer_blend, options.resolution, options.size) == (
        0.25,
        "800x600",
        (800, 600),
    )
    schema = msgspec.json.schema(FaceSwapOptions)["$defs"]["FaceSwapOptions"]
    quality = schema["properties"]["quality"]
    assert quality["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert "between 1 and 100" in quality["description"]


def test_comfy_graphs_are_capped_in_nodes_and_depth() -> None:
    from pixelbus.contracts.validation import MAX_GRAPH_NODES, MAX_INPUT_DEPTH

    def comm(wf_json: object) -> bytes:
        body = {
            "workflow": "wf",
            "environment": "comm",
            "params": {"input_data": {"wf_json": wf_json}},
        }
        return json.dumps(body).encode()

    big = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(MAX_GRAPH_NODES + 1)}
    with pytest.raises(ValidationFailed) as caught:
        validate_create(decode_create_request(comm(big)))
    assert "nodes; at most" in caught.value.errors[0].msg
    deep: dict[str, object] = {"class_type": "X", "inputs": {}}
    for _ in range(MAX_INPUT_DEPTH):
        deep = {"inputs": {"x": deep}}
    with pytest.raises(ValidationFailed) as caught:
        validate_create(decode_create_request(comm({"1": deep})))
    assert "deeper than" in caught.value.errors[0].msg
    ok = {str(i): {"class_type": "EmptyImage", "inputs": {"width": 8}} for i in range(50)}
    assert validate_create(decode_create_request(comm(ok))).environment == "comm"
