"""The inswapper pipeline on real photos with stand-in models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import Photos, StandIns
from pixelbus.faceswap_worker.engines import (
    FaceIndexOutOfRange,
    FaceSwapEngine,
    NoFaceFound,
    RGBImage,
    SwapOptions,
)
from pixelbus.faceswap_worker.engines.base import FaceBox
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog, UnknownModel
from pixelbus.faceswap_worker.engines.errors import BadModelOutput, ModelNotInstalled
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.sessions import SessionCache, input_dtype
from pixelbus.faceswap_worker.engines.swapper import InswapperModel, read_emap
from pixelbus.faceswap_worker.models.registry import load_registry
from pixelbus.faceswap_worker.models.store import ModelStore
from pixelbus.faceswap_worker.testing.standins import build_swapper


def change(before: RGBImage, after: RGBImage, box: FaceBox) -> float:
    region = (slice(max(box.top, 0), box.bottom), slice(max(box.left, 0), box.right))
    return float(np.abs(after[region].astype(np.int16) - before[region]).mean())


def outside(image: RGBImage, boxes: list[FaceBox], grow: float) -> np.ndarray:
    """A mask of the pixels farther than ``grow`` box sides from every face."""
    keep = np.ones(image.shape[:2], bool)
    for box in boxes:
        side = max(box.right - box.left, box.bottom - box.top)
        pad = round(side * grow)
        keep[max(0, box.top - pad) : box.bottom + pad, max(0, box.left - pad) : box.right + pad] = (
            False
        )
    return keep


def test_is_an_engine_and_named_after_its_model(inswapper: InswapperEngine) -> None:
    assert isinstance(inswapper, FaceSwapEngine)
    assert inswapper.name == "inswapper_128"


def test_many_replaces_every_face_of_the_group_and_nothing_else(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    before = photos.group.copy()
    result = inswapper.swap(photos.astronaut, photos.group, SwapOptions())
    boxes = [f.box for f in standins.builtin_faces["group"]]
    assert len(boxes) == 6
    for box in boxes:
        assert change(photos.group, result, box) > 20
    far = outside(photos.group, boxes, grow=0.8)
    assert np.array_equal(result[far], photos.group[far])
    assert np.array_equal(photos.group, before)  # the input is left alone


def test_one_target_face_by_index(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    boxes = [f.box for f in standins.builtin_faces["group"]]
    result = inswapper.swap(photos.astronaut, photos.group, SwapOptions(target_face_index=2))
    changed = [change(photos.group, result, box) > 20 for box in boxes]
    assert changed == [False, False, True, False, False, False]


def test_face_order_decides_the_numbering(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    boxes = [f.box for f in standins.builtin_faces["group"]]
    largest = max(range(6), key=lambda i: boxes[i].area)
    result = inswapper.swap(
        photos.astronaut,
        photos.group,
        SwapOptions(target_face_index=0, face_order="large-small"),
    )
    assert [change(photos.group, result, b) > 20 for b in boxes] == [i == largest for i in range(6)]


def test_the_source_face_decides_the_result(photos: Photos, inswapper: InswapperEngine) -> None:
    from_astronaut = inswapper.swap(photos.astronaut, photos.hopper, SwapOptions())
    from_hopper = inswapper.swap(photos.hopper, photos.hopper, SwapOptions())
    assert np.abs(from_astronaut.astype(int) - from_hopper).mean() > 1
    # The second source face of the group is another identity than the first.
    first = inswapper.swap(photos.group, photos.hopper, SwapOptions(source_face_index=0))
    second = inswapper.swap(photos.group, photos.hopper, SwapOptions(source_face_index=1))
    assert np.abs(first.astype(int) - second).mean() > 0.5


def test_out_of_range_and_missing_faces(photos: Photos, inswapper: InswapperEngine) -> None:
    with pytest.raises(FaceIndexOutOfRange, match="target image has 6 faces"):
        inswapper.swap(photos.astronaut, photos.group, SwapOptions(target_face_index=6))
    with pytest.raises(FaceIndexOutOfRange, match="source_face_index 1"):
        inswapper.swap(photos.astronaut, photos.group, SwapOptions(source_face_index=1))
    with pytest.raises(NoFaceFound, match="source"):
        inswapper.swap(photos.coffee, photos.group, SwapOptions())
    with pytest.raises(NoFaceFound, match="target"):
        inswapper.swap(photos.astronaut, photos.coffee, SwapOptions())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_insightface_inswapper_on_the_same_stand_ins(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine
) -> None:
    """InsightFace's own INSwapper (latent from emap, 128 alignment) gives our crop."""
    from insightface.app.common import Face
    from insightface.model_zoo.inswapper import INSwapper

    path = standins.directory / "inswapper_128.onnx"
    reference = INSwapper(str(path), SessionCache(["CPUExecutionProvider"]).get(path))
    source = inswapper.find_faces(photos.astronaut)[0]
    target = inswapper.find_faces(photos.hopper)[0]
    embedding = inswapper.embedder.embed(photos.astronaut, source.keypoints)
    their_source = Face(kps=source.keypoints, embedding=embedding)
    their_target = Face(kps=target.keypoints)
    import cv2

    bgr = cv2.cvtColor(photos.hopper, cv2.COLOR_RGB2BGR)
    their_crop, _ = reference.get(bgr, their_target, their_source, paste_back=False)
    ours = inswapper.swapper.swap(
        inswapper_crop(inswapper, photos.hopper, target.keypoints),
        inswapper.swapper.latent(embedding),
    )
    np.testing.assert_allclose(
        ours.astype(int), cv2.cvtColor(their_crop, cv2.COLOR_BGR2RGB).astype(int), atol=2
    )


def inswapper_crop(engine: InswapperEngine, image: RGBImage, keypoints: np.ndarray) -> RGBImage:
    from pixelbus.faceswap_worker.engines.alignment import (
        arcface_template,
        similarity_transform,
        warp_face,
    )

    return warp_face(image, similarity_transform(keypoints, arcface_template(128)), 128)


def test_fp16_gives_the_fp32_result(photos: Photos, catalog: EngineCatalog) -> None:
    fp32 = catalog.get("inswapper_128").swap(photos.astronaut, photos.hopper, SwapOptions())
    fp16 = catalog.get("inswapper_128_fp16").swap(photos.astronaut, photos.hopper, SwapOptions())
    assert np.abs(fp32.astype(int) - fp16).max() <= 3


def test_input_dtypes_come_from_the_session(
    photos: Photos, standins: StandIns, inswapper: InswapperEngine, tmp_path
) -> None:
    path = build_swapper(tmp_path / "half_io.onnx", fp16=True, fp16_io=True)
    session = SessionCache(["CPUExecutionProvider"]).get(path)
    assert input_dtype(session, "target") == np.float16
    engine = InswapperEngine(
        detector=inswapper.detector,
        embedder=inswapper.embedder,
        swapper=InswapperModel("half", session, read_emap(path)),
    )
    result = engine.swap(photos.astronaut, photos.hopper, SwapOptions())
    assert np.abs(result.astype(int) - photos.hopper).mean() > 1


def test_a_black_face_from_the_model_is_an_error(
    photos: Photos, inswapper: InswapperEngine, tmp_path
) -> None:
    path = build_swapper(tmp_path / "black.onnx", fp16=True, black=True)
    session = SessionCache(["CPUExecutionProvider"]).get(path)
    engine = InswapperEngine(
        detector=inswapper.detector,
        embedder=inswapper.embedder,
        swapper=InswapperModel("inswapper_128_fp16", session, read_emap(path)),
    )
    with pytest.raises(BadModelOutput, match="black") as exc:
        engine.swap(photos.astronaut, photos.hopper, SwapOptions())
    assert exc.value.code == "bad_model_output" and not exc.value.retryable


def test_enhancer_blends_over_the_swapped_faces(photos: Photos, catalog: EngineCatalog) -> None:
    engine = catalog.get("inswapper_128")
    plain = engine.swap(photos.astronaut, photos.hopper, SwapOptions())
    off = engine.swap(
        photos.astronaut, photos.hopper, SwapOptions(enhancer="gfpgan_1.4", enhancer_blend=0)
    )
    full = engine.swap(
        photos.astronaut, photos.hopper, SwapOptions(enhancer="gfpgan_1.4", enhancer_blend=1)
    )
    half = engine.swap(
        photos.astronaut, photos.hopper, SwapOptions(enhancer="gfpgan_1.4", enhancer_blend=0.5)
    )
    assert np.array_equal(plain, off)
    d_full = np.abs(full.astype(int) - plain).mean()
    d_half = np.abs(half.astype(int) - plain).mean()
    assert d_full > 1 and 0.3 * d_full < d_half < 0.7 * d_full


def test_sessions_and_engines_are_created_once(standins: StandIns) -> None:
    sessions = SessionCache(["CPUExecutionProvider"])
    catalog = EngineCatalog(store=standins.store, sessions=sessions)
    first = catalog.get("inswapper_128")
    assert catalog.get("inswapper_128") is first
    catalog.get("inswapper_128_fp16")  # shares the detector and recogniser sessions
    assert len(sessions) == 4
    assert sorted(catalog.names()) == ["inswapper_128", "inswapper_128_fp16"]


def test_a_missing_model_names_the_command_that_installs_it(standins: StandIns, tmp_path) -> None:
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (tmp_path / name).write_bytes((standins.directory / name).read_bytes())
    store = ModelStore(tmp_path, load_registry(standins.manifest))
    catalog = EngineCatalog(store=store)
    with pytest.raises(ModelNotInstalled) as exc:
        catalog.get("inswapper_128_fp16")
    assert "`pixelbus models pull inswapper_128_fp16`" in str(exc.value)
    assert exc.value.code == "model_not_installed" and not exc.value.retryable
    with pytest.raises(ModelNotInstalled, match=r"pixelbus models pull gfpgan_1\.4"):
        catalog.enhancer("gfpgan_1.4")
    with pytest.raises(UnknownModel):
        catalog.get("no_such_model")
    (tmp_path / "inswapper_128_fp16.onnx").write_bytes(b"truncated")
    with pytest.raises(ModelNotInstalled, match="damaged"):
        catalog.get("inswapper_128_fp16")


def test_a_worker_whose_default_model_is_missing_does_not_start(
    standins: StandIns, tmp_path: Path
) -> None:
    from pixelbus.faceswap_worker.engines.setup import build_catalog
    from pixelbus.faceswap_worker.settings import FaceSwapSettings
    from pixelbus.runtime.errors import SettingsError

    env = {
        "PIXELBUS_MODELS_DIR": str(tmp_path),
        "PIXELBUS_MODELS_MANIFEST": str(standins.manifest),
        "PIXELBUS_ONNX_PROVIDERS": "cpu",
        "PIXELBUS_FACESWAP_DEFAULT_MODEL": "inswapper_128_fp16",
    }
    with pytest.raises(SettingsError, match="pixelbus models pull det_10g"):
        build_catalog(FaceSwapSettings.from_env(env))
    ready = build_catalog(
        FaceSwapSettings.from_env({**env, "PIXELBUS_MODELS_DIR": str(standins.directory)})
    )
    assert "inswapper_128_fp16" in ready.names()
    with pytest.raises(SettingsError, match="PIXELBUS_ONNX_PROVIDERS"):
        build_catalog(FaceSwapSettings.from_env({**env, "PIXELBUS_ONNX_PROVIDERS": "tensorrt"}))
