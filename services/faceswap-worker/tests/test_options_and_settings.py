"""Task options, execution providers and settings (pure)."""

from __future__ import annotations

import pytest

from pixelbus.faceswap_worker.engines.base import FaceBox, order_faces
from pixelbus.faceswap_worker.engines.sessions import resolve_providers
from pixelbus.faceswap_worker.options import OutputOptions, parse_options
from pixelbus.faceswap_worker.settings import FaceSwapSettings
from pixelbus.runtime.errors import SettingsError

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_defaults_are_largest_source_onto_every_target_as_png() -> None:
    swap, output = parse_options({})
    assert swap.source_face_index is None and swap.target_face_index is None
    assert swap.face_order == "left-right" and swap.enhancer is None
    assert output == OutputOptions("png", 92, None)
    assert (output.content_type, output.filename) == ("image/png", "result.png")


def test_every_option_is_read() -> None:
    swap, output = parse_options(
        {
            "source_face_index": 1,
            "target_face_index": "many",
            "face_order": "large-small",
            "enhancer": "gfpgan_1.4",
            "enhancer_blend": 0.5,
            "output_format": "JPG",
            "quality": 70,
            "resolution": "800x600",
        }
    )
    assert (swap.source_face_index, swap.target_face_index, swap.face_order) == (
        1,
        None,
        "large-small",
    )
    assert (swap.enhancer, swap.enhancer_blend) == ("gfpgan_1.4", 0.5)
    assert output == OutputOptions("jpeg", 70, (800, 600), asked="jpeg")
    assert output.filename == "result.jpg"


def test_a_video_output_format_is_kept_apart_from_the_image_one() -> None:
    _, webm = parse_options({"output_format": "WebM"})
    assert (webm.video_format, webm.asked, webm.format) == ("webm", "webm", "png")
    _, default = parse_options({})
    assert (default.video_format, default.asked) == ("mp4", None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target_face_index", -1, "target_face_index"),
        ("source_face_index", True, "source_face_index"),
        ("face_order", "random", "face_order"),
        ("output_format", "gif", "output_format"),
        ("quality", 0, "quality"),
        ("enhancer_blend", 1.5, "enhancer_blend"),
        ("resolution", "big", "resolution"),
    ],
)
def test_bad_options_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_options({field: value})


def test_face_orders() -> None:
    small = FaceBox(left=10, top=100, right=30, bottom=120)
    large = FaceBox(left=50, top=5, right=150, bottom=105)
    high = FaceBox(left=200, top=0, right=240, bottom=40)
    boxes = [small, large, high]
    assert order_faces(boxes, "left-right") == [0, 1, 2]
    assert order_faces(boxes, "right-left") == [2, 1, 0]
    assert order_faces(boxes, "top-bottom") == [2, 1, 0]
    assert order_faces(boxes, "bottom-top") == [0, 1, 2]
    assert order_faces(boxes, "large-small") == [1, 2, 0]
    assert order_faces(boxes, "small-large") == [0, 2, 1]


def test_providers_auto_prefers_cuda_when_present() -> None:
    assert resolve_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("auto", [CPU]) == [CPU]
    assert resolve_providers("cuda,cpu", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ValueError, match="'cuda' is not available"):
        resolve_providers("cuda", [CPU])


def test_settings_read_the_seed_names() -> None:
    settings = FaceSwapSettings.from_env(
        {
            "FACE_SWAP_API_URL": "http://faceswap.internal:8080",
            "FACE_SWAP_TIMEOUT": "30",
            "FACE_SWAP_RETRY_COUNT": "5",
            "PIXELBUS_MODELS_DIR": "/models",
            "PIXELBUS_ONNX_PROVIDERS": "cpu",
        }
    )
    assert settings.remote.url == "http://faceswap.internal:8080"
    assert (settings.remote.timeout_s, settings.remote.retry_count) == (30, 5)
    assert str(settings.models.directory) == "/models" and settings.models.providers == "cpu"
    with pytest.raises(SettingsError, match="FACE_SWAP_RETRY_COUNT"):
        FaceSwapSettings.from_env({"FACE_SWAP_RETRY_COUNT": "-1"})
    with pytest.raises(SettingsError, match="needs FACE_SWAP_API_URL"):
        FaceSwapSettings.from_env({"PIXELBUS_FACESWAP_DEFAULT_MODEL": "remote"})


def test_the_remote_url_is_logged_without_credentials() -> None:
    settings = FaceSwapSettings.from_env(
        {"FACE_SWAP_API_URL": "https://user:secret@swap.example/api"}
    )
    assert settings.redacted()["FACE_SWAP_API_URL"] == "https://***@swap.example/api"
    assert "secret" not in str(settings.redacted())
