"""``just bench-faceswap``: per-face time of the face-swap pipelines on this machine.

For each pipeline (the built-in landmark engine; the inswapper engine with fp32 and fp16
models) it times ``swap`` of one source face onto the six faces of InsightFace's group
photo and onto the one face of Grace Hopper, and reports the median over ``--runs`` runs
divided by the number of faces. Next to it, the time onnxruntime takes for the models
alone (one ``run`` each: detector at 640x640, recogniser, swapper), so that the
difference is our own pre- and post-processing (alignment, paste-back, colour handling).

By default the ONNX models are the test stand-ins (same names, shapes and dtypes as the
real ones, negligible compute): the figures then measure our code. With ``--models-dir``
pointing at installed real models (``pixelbus models pull``), they measure the real thing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pixelbus.faceswap_worker.engines.base import SwapOptions
from pixelbus.faceswap_worker.engines.catalog import EngineCatalog
from pixelbus.faceswap_worker.engines.inswapper import InswapperEngine
from pixelbus.faceswap_worker.engines.landmark import LandmarkEngine
from pixelbus.faceswap_worker.engines.sessions import SessionCache, resolve_providers
from pixelbus.faceswap_worker.models.registry import load_registry
from pixelbus.faceswap_worker.models.store import ModelStore
from pixelbus.faceswap_worker.testing.standins import install_standins, photos_found_by
from pixelbus.media.arrays import decode_image
from tests.conftest import package_file


def median_ms(call: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def load(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26)


def model_alone(engine: InswapperEngine, runs: int) -> dict[str, float]:
    """One onnxruntime ``run`` of each model on zeros of its input shape."""
    det = engine.detector._session
    rec = engine.embedder._session
    swp = engine.swapper._session
    size = engine.detector.input_size

    def feed(
        session: ort.InferenceSession, shapes: dict[str, tuple[int, ...]]
    ) -> Callable[[], object]:
        dtypes = {
            i.name: np.float16 if i.type == "tensor(float16)" else np.float32
            for i in session.get_inputs()
        }
        inputs = {name: np.zeros(shape, dtypes[name]) for name, shape in shapes.items()}
        return lambda: session.run(None, inputs)

    return {
        "detector": median_ms(feed(det, {det.get_inputs()[0].name: (1, 3, *size)}), runs),
        "recogniser": median_ms(feed(rec, {rec.get_inputs()[0].name: (1, 3, 112, 112)}), runs),
        "swapper": median_ms(feed(swp, {"target": (1, 3, 128, 128), "source": (1, 512)}), runs),
    }


def pipeline_stages(
    engine: InswapperEngine, source: np.ndarray, target: np.ndarray, runs: int
) -> dict[str, float]:
    """Our own stages, each with its model run inside."""
    from pixelbus.faceswap_worker.engines.alignment import (
        arcface_template,
        similarity_transform,
        warp_face,
    )
    from pixelbus.faceswap_worker.engines.pasteback import paste_back, soft_mask

    chosen = engine.find_faces(source)[0]
    face = engine.find_faces(target)[0]
    embedding = engine.embedder.embed(source, chosen.keypoints)
    latent = engine.swapper.latent(embedding)
    template, mask = arcface_template(128), soft_mask(128)

    def one_face() -> object:
        matrix = similarity_transform(face.keypoints, template)
        swapped = engine.swapper.swap(warp_face(target, matrix, 128), latent)
        return paste_back(target, swapped, matrix, mask)

    return {
        "detect": median_ms(lambda: engine.detector.detect(target), runs),
        "embed": median_ms(lambda: engine.embedder.embed(source, chosen.keypoints), runs),
        "face": median_ms(one_face, runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models-dir", type=Path, help="real models (default: stand-ins)")
    parser.add_argument("--manifest", type=Path, help="pins for --models-dir")
    parser.add_argument("--providers", default=os.environ.get("PIXELBUS_ONNX_PROVIDERS", "auto"))
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be 20 or more (medians of fewer runs are noise)")

    group = load(package_file("insightface", "data", "images", "t1.jpg"))
    source = load(package_file("skimage", "data", "astronaut.png"))
    hopper = load(package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"))
    builtin = LandmarkEngine()
    with tempfile.TemporaryDirectory() as scratch:
        directory, manifest, kind = args.models_dir, args.manifest, "real models"
        if directory is None:
            directory, kind = Path(scratch), "stand-in models"
            photos = photos_found_by(builtin.find_faces, [group, source, hopper])
            manifest = install_standins(directory, photos)
        providers = resolve_providers(args.providers, ort.get_available_providers())
        catalog = EngineCatalog(
            fixed={"builtin": builtin},
            store=ModelStore(directory, load_registry(manifest)),
            sessions=SessionCache(providers, intra_op_threads=args.threads),
        )
        print(f"face swap per face, median of {args.runs} runs, {kind}, providers {providers}")
        print(f"{'pipeline':<22}{'6 faces (t1.jpg)':>20}{'1 face (hopper)':>18}")
        engines = [
            "builtin",
            *[m for m in ("inswapper_128", "inswapper_128_fp16") if m in catalog.names()],
        ]
        for model in engines:
            engine = catalog.get(model)
            many = median_ms(lambda e=engine: e.swap(source, group, SwapOptions()), args.runs) / 6
            one = median_ms(lambda e=engine: e.swap(source, hopper, SwapOptions()), args.runs)
            print(f"{model:<22}{many:>17.1f} ms{one:>15.1f} ms")
        for model in engines[1:]:
            engine = catalog.get(model)
            assert isinstance(engine, InswapperEngine)
            stages = pipeline_stages(engine, source, group, args.runs)
            print(
                f"{model} stages: detect {stages['detect']:.2f} ms/image (t1.jpg), "
                f"embed {stages['embed']:.2f} ms, align+swap+paste {stages['face']:.2f} ms/face"
            )
            alone = model_alone(engine, args.runs)
            per_face = alone["swapper"]
            print(
                f"{model} models alone (onnxruntime run): swapper {per_face:.2f} ms/face, "
                f"detector {alone['detector']:.2f} ms/image, recogniser {alone['recogniser']:.2f} ms"
            )


if __name__ == "__main__":
    main()
