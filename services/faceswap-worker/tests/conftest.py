"""Real photos and stand-in ONNX models (built once per test session)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelbus.faceswap_worker.engines import RGBImage
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.landmark import Face, LandmarkEngine
from pixelbus.faceswap_worker.engines.sessions import SessionCache
from pixelbus.faceswap_worker.models.registry import load_registry
from pixelbus.faceswap_worker.models.store import ModelStore
from pixelbus.faceswap_worker.testing.standins import install_standins, photos_found_by


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def load_photo(path: Path) -> RGBImage:
    return np.array(Image.open(path).convert("RGB"))


@dataclass(frozen=True)
class Photos:
    group: RGBImage  # insightface's t1.jpg: six faces
    astronaut: RGBImage
    hopper: RGBImage
    coffee: RGBImage  # no face


@dataclass(frozen=True)
class StandIns:
    directory: Path
    manifest: Path
    store: ModelStore
    builtin_faces: dict[str, list[Face]]  # what the built-in (dlib) detector finds


@pytest.fixture(scope="session")
def photos() -> Photos:
    return Photos(
        group=load_photo(package_file("insightface", "data", "images", "t1.jpg")),
        astronaut=load_photo(package_file("skimage", "data", "astronaut.png")),
        hopper=load_photo(
            package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
        ),
        coffee=load_photo(package_file("skimage", "data", "coffee.png")),
    )


@pytest.fixture(scope="session")
def landmark_engine() -> LandmarkEngine:
    return LandmarkEngine()


@pytest.fixture(scope="session")
def standins(
    tmp_path_factory: pytest.TempPathFactory, photos: Photos, landmark_engine: LandmarkEngine
) -> StandIns:
    directory = tmp_path_factory.mktemp("models")
    images = {"group": photos.group, "astronaut": photos.astronaut, "hopper": photos.hopper}
    manifest = install_standins(
        directory, photos_found_by(landmark_engine.find_faces, list(images.values()))
    )
    store = ModelStore(directory, load_registry(manifest))
    faces = {name: landmark_engine.find_faces(image) for name, image in images.items()}
    return StandIns(directory, manifest, store, faces)


@pytest.fixture(scope="session")
def catalog(standins: StandIns) -> EngineCatalog:
    return EngineCatalog(store=standins.store, sessions=SessionCache(["CPUExecutionProvider"]))


@pytest.fixture(scope="session")
def inswapper(catalog: EngineCatalog) -> InswapperEngine:
    engine = catalog.get("inswapper_128")
    assert isinstance(engine, InswapperEngine)
    return engine
