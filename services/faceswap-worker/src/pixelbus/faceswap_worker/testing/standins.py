"""Stand-in ONNX models with exactly the input/output names, shapes and dtypes of the real
ones (see the model registry), small enough to build in a test.

- detector (``det_10g``): reports the faces it was given for each known photo. A photo
  is recognised by the mean of the normalised input (each photo has its own), and its
  faces are written at the anchors SCRFD would use, with a few weaker duplicates beside
  each (for non-maximum suppression to remove) and a decoy under the score threshold.
- recogniser (``w600k_r50``): a fixed random projection of an 8x8 average of the crop.
- swapper (``inswapper_128``): mixes the target crop with a colour derived from the
  latent; ``emap`` is the graph's last initializer. fp16 variants compute in half
  precision, with float32 I/O (as the published fp16 model) or half I/O; a ``black``
  variant answers zeros, as broken fp16 runs do.
- enhancer (``gfpgan_1.4``): lowers the contrast of the 512 crop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "DetectorPhoto",
    "build_detector",
    "build_recogniser",
    "build_swapper",
    "file_pin",
    "install_standins",
    "photos_found_by",
]

OPSET = [helper.make_opsetid("", 17)]
STRIDES = (8, 16, 32)
SCORE_NAMES = ("448", "471", "494")
BOX_NAMES = ("451", "474", "497")
KPS_NAMES = ("454", "477", "500")
_SIGNATURE_WIDTH = 0.01


@dataclass(frozen=True)
class DetectorPhoto:
    image: NDArray[np.uint8]
    """RGB, as the engine will receive it."""
    faces: Sequence[tuple[tuple[float, float, float, float], NDArray[np.float32]]]
    """(x1, y1, x2, y2) and 5 x 2 keypoints, in image pixels."""


def five_points(landmarks: NDArray[np.float32]) -> NDArray[np.float32]:
    """The five SCRFD keypoints from dlib's 68 (iBUG 300-W order)."""
    return np.array(
        [
            landmarks[36:42].mean(axis=0),
            landmarks[42:48].mean(axis=0),
            landmarks[30],
            landmarks[48],
            landmarks[54],
        ],
        dtype=np.float32,
    )


def _letterbox_scale(image: NDArray[np.uint8], size: tuple[int, int]) -> tuple[float, int, int]:
    height, width = size
    rows, cols = image.shape[:2]
    scale = min(width / cols, height / rows)
    new_w, new_h = max(1, round(cols * scale)), max(1, round(rows * scale))
    return new_h / rows, new_w, new_h


def blob_signature(image: NDArray[np.uint8], size: tuple[int, int]) -> float:
    """The mean of SCRFD's normalised input for ``image`` (zero padding included)."""
    height, width = size
    _, new_w, new_h = _letterbox_scale(image, size)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    total = ((resized.astype(np.float64) - 127.5) / 128).sum()
    padding = (height * width - new_w * new_h) * 3 * (-127.5 / 128)
    return float((total + padding) / (height * width * 3))


def _bake(photo: DetectorPhoto, size: tuple[int, int]) -> list[NDArray[np.float32]]:
    """The nine output tensors for ``photo``."""
    height, width = size
    scale, _, _ = _letterbox_scale(photo.image, size)
    scores = [np.zeros(((height // s) * (width // s) * 2, 1), np.float32) for s in STRIDES]
    boxes = [np.zeros((len(sc), 4), np.float32) for sc in scores]
    points = [np.zeros((len(sc), 10), np.float32) for sc in scores]

    def put(level: int, cell: tuple[int, int], anchor: int, box, kps, score: float) -> None:  # type: ignore[no-untyped-def]
        stride = STRIDES[level]
        cols = width // stride
        row, col = cell
        if not (0 <= row < height // stride and 0 <= col < cols):
            return
        index = (row * cols + col) * 2 + anchor
        cx, cy = col * stride, row * stride
        x1, y1, x2, y2 = box
        scores[level][index, 0] = score
        boxes[level][index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / stride
        points[level][index] = ((kps - (cx, cy)) / stride).reshape(-1)

    for (x1, y1, x2, y2), kps in photo.faces:
        box = np.array([x1, y1, x2, y2], dtype=np.float64) * scale
        kp = np.asarray(kps, dtype=np.float64) * scale
        side = max(box[2] - box[0], box[3] - box[1])
        level = 0 if side < 64 else 1 if side < 160 else 2
        stride = STRIDES[level]
        col = int((box[0] + box[2]) / 2 // stride)
        row = int((box[1] + box[3]) / 2 // stride)
        put(level, (row, col), 0, box, kp, 0.92)
        jitter = np.array([1.5, -1.0, 2.0, 1.0])
        put(level, (row, col), 1, box + jitter, kp, 0.85)  # duplicates for NMS
        put(level, (row, col + 1), 0, box - jitter, kp, 0.8)
    # A decoy below the usual 0.5 threshold, in the top left corner.
    put(2, (0, 0), 1, np.array([2.0, 2.0, 40.0, 40.0]), np.full((5, 2), 20.0), 0.3)
    return scores + boxes + points


def build_detector(
    path: Path, photos: Sequence[DetectorPhoto], *, input_size: tuple[int, int] = (640, 640)
) -> Path:
    """A ``det_10g`` stand-in reporting ``photos``' faces (and none for other images)."""
    signatures = np.array([blob_signature(p.image, input_size) for p in photos], np.float32)
    gaps = np.abs(signatures[:, None] - signatures[None, :]) + np.eye(len(photos))
    if len(photos) > 1 and gaps.min() < 5 * _SIGNATURE_WIDTH:
        raise ValueError(
            "two photos have nearly the same mean: the stand-in cannot tell them apart"
        )
    baked = [_bake(photo, input_size) for photo in photos]
    initializers = [
        numpy_helper.from_array(signatures, "signatures"),
        numpy_helper.from_array(np.array(_SIGNATURE_WIDTH, np.float32), "width"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "signatures"], ["offset"]),
        helper.make_node("Div", ["offset", "width"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "scaled"], ["squared"]),
        helper.make_node("Neg", ["squared"], ["negative"]),
        helper.make_node("Exp", ["negative"], ["weights_flat"]),
        helper.make_node("Unsqueeze", ["weights_flat", "zero_axis"], ["weights"]),
    ]
    initializers.append(numpy_helper.from_array(np.array([0], np.int64), "zero_axis"))
    outputs = []
    names = [*SCORE_NAMES, *BOX_NAMES, *KPS_NAMES]
    for t, name in enumerate(names):
        stack = np.stack([b[t].reshape(-1) for b in baked]).astype(np.float32)
        rows, columns = baked[0][t].shape
        initializers.append(numpy_helper.from_array(stack, f"table_{name}"))
        initializers.append(
            numpy_helper.from_array(np.array([rows, columns], np.int64), f"shape_{name}")
        )
        nodes.append(helper.make_node("MatMul", ["weights", f"table_{name}"], [f"flat_{name}"]))
        nodes.append(helper.make_node("Reshape", [f"flat_{name}", f"shape_{name}"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows, columns]))
    graph = helper.make_graph(
        nodes,
        "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs,
        initializers,
    )
    return _save(graph, path)


def build_recogniser(path: Path) -> Path:
    """A ``w600k_r50`` stand-in: ``input.1`` [N,3,112,112] → ``683`` [N,512]."""
    rng = np.random.default_rng(7)
    projection = rng.standard_normal((192, 512)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]
        ),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "projection"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        [numpy_helper.from_array(projection, "projection")],
    )
    return _save(graph, path)


def build_swapper(
    path: Path,
    *,
    fp16: bool = False,
    fp16_io: bool = False,
    black: bool = False,
) -> Path:
    """An ``inswapper_128`` stand-in: ``target`` [1,3,128,128] and ``source`` [1,512] →
    ``output`` [1,3,128,128]; ``emap`` [512,512] is the last initializer."""
    rng = np.random.default_rng(11)
    inner = np.float16 if fp16 else np.float32
    inner_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    io_type = TensorProto.FLOAT16 if fp16_io else TensorProto.FLOAT
    q, _ = np.linalg.qr(rng.standard_normal((512, 512)))
    emap = q.astype(inner)
    initializers = [
        numpy_helper.from_array((rng.standard_normal((512, 3)) * 4).astype(inner), "colour"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "colour_shape"),
        numpy_helper.from_array(np.array(0.0 if black else 0.35, inner), "keep"),
        numpy_helper.from_array(np.array(0.0 if black else 0.65, inner), "paint"),
    ]
    nodes = [
        helper.make_node("Cast", ["target"], ["target_in"], to=inner_type),
        helper.make_node("Cast", ["source"], ["source_in"], to=inner_type),
        helper.make_node("MatMul", ["source_in", "colour"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["tone"]),
        helper.make_node("Reshape", ["tone", "colour_shape"], ["tone_map"]),
        helper.make_node("Mul", ["target_in", "keep"], ["kept"]),
        helper.make_node("Mul", ["tone_map", "paint"], ["painted"]),
        helper.make_node("Add", ["kept", "painted"], ["mixed"]),
        helper.make_node("Cast", ["mixed"], ["output"], to=io_type),
    ]
    initializers.append(numpy_helper.from_array(emap, "emap"))  # last, as in the real model
    graph = helper.make_graph(
        nodes,
        "inswapper_standin",
        [
            helper.make_tensor_value_info("target", io_type, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", io_type, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", io_type, [1, 3, 128, 128])],
        initializers,
    )
    return _save(graph, path)


def build_enhancer(path: Path) -> Path:
    """A GFPGAN-style stand-in: ``input`` [1,3,512,512] → ``output``, less contrast."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "factor"], ["output"])],
        "gfpgan_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        [numpy_helper.from_array(np.array(0.6, np.float32), "factor")],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="pixelbus-standin")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def photos_found_by(
    find_faces: Callable[[NDArray[np.uint8]], Sequence[Any]], images: Sequence[NDArray[np.uint8]]
) -> list[DetectorPhoto]:
    """``DetectorPhoto``s with the faces that a landmark engine's ``find_faces`` reports
    (boxes and 68 landmarks), so that the stand-in detector lands on the same faces."""
    photos = []
    for image in images:
        faces = [
            ((f.box.left, f.box.top, f.box.right, f.box.bottom), five_points(f.points))
            for f in find_faces(image)
        ]
        photos.append(DetectorPhoto(image, faces))
    return photos


def install_standins(
    directory: Path, photos: Sequence[DetectorPhoto], *, enhancer: bool = True
) -> Path:
    """Every stand-in under its registry file name in ``directory``, and a manifest
    (``manifest.json``) pinning their sha256 and size; returns the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    built = {
        "det_10g": build_detector(directory / "det_10g.onnx", photos),
        "w600k_r50": build_recogniser(directory / "w600k_r50.onnx"),
        "inswapper_128": build_swapper(directory / "inswapper_128.onnx"),
        "inswapper_128_fp16": build_swapper(directory / "inswapper_128_fp16.onnx", fp16=True),
    }
    if enhancer:
        built["gfpgan_1.4"] = build_enhancer(directory / "gfpgan_1.4.onnx")
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({"models": {n: file_pin(p) for n, p in built.items()}}))
    return manifest


def file_pin(path: Path) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}
