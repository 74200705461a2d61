"""The production engine: SCRFD detection, ArcFace identity, inswapper, soft paste-back,
and optionally a face enhancer, all on onnxruntime (see the modules of each step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from pixelbus.faceswap_worker.engines.alignment import (
    arcface_template,
    similarity_transform,
    warp_face,
)
from pixelbus.faceswap_worker.engines.arcface import ArcFaceEmbedder
from pixelbus.faceswap_worker.engines.base import (
    FaceOrder,
    LocatedFace,
    RGBImage,
    SwapOptions,
    order_faces,
    require_rgb,
    select_source,
    swap_as_frame,
)
from pixelbus.faceswap_worker.engines.enhancer import FaceEnhancer
from pixelbus.faceswap_worker.engines.pasteback import paste_back, soft_mask
from pixelbus.faceswap_worker.engines.scrfd import Detection, FloatArray, ScrfdDetector
from pixelbus.faceswap_worker.engines.swapper import InswapperModel

__all__ = ["InswapperEngine"]

EnhancerLookup = Callable[[str], FaceEnhancer]


def _no_enhancers(name: str) -> FaceEnhancer:
    raise ValueError(f"no face enhancer is configured on this engine (asked for {name!r})")


class InswapperEngine:
    """Thread-safe: onnxruntime sessions may run concurrently."""

    def __init__(
        self,
        *,
        detector: ScrfdDetector,
        embedder: ArcFaceEmbedder,
        swapper: InswapperModel,
        enhancers: EnhancerLookup = _no_enhancers,
    ) -> None:
        self.name = swapper.name
        self.detector = detector
        self.embedder = embedder
        self.swapper = swapper
        self._enhancers = enhancers
        self._template = arcface_template(swapper.size)
        self._mask = soft_mask(swapper.size)

    def find_faces(self, image: RGBImage, order: FaceOrder = "left-right") -> list[Detection]:
        """Faces numbered in ``order``."""
        found = self.detector.detect(image)
        return [found[i] for i in order_faces([d.face_box for d in found], order)]

    def swap(self, source: RGBImage, target: RGBImage, options: SwapOptions) -> RGBImage:
        return swap_as_frame(self, source, target, options)

    def prepare_source(self, source: RGBImage, options: SwapOptions) -> FloatArray:
        """The swapper's latent of the source's chosen face."""
        require_rgb(source, "source")
        source_faces = self.find_faces(source, options.face_order)
        chosen = source_faces[
            select_source([f.face_box for f in source_faces], options.source_face_index)
        ]
        return self.swapper.latent(self.embedder.embed(source, chosen.keypoints))

    def locate(self, frame: RGBImage, options: SwapOptions) -> list[LocatedFace]:
        return [
            LocatedFace(d.face_box, d.keypoints) for d in self.find_faces(frame, options.face_order)
        ]

    def swap_located(
        self, prepared: object, frame: RGBImage, faces: Sequence[LocatedFace], options: SwapOptions
    ) -> RGBImage:
        latent = cast(FloatArray, prepared)
        enhancer = self._enhancers(options.enhancer) if options.enhancer else None
        result = frame
        for face in faces:  # every chosen face, in this one pass
            matrix = similarity_transform(face.points, self._template)
            swapped = self.swapper.swap(warp_face(frame, matrix, self.swapper.size), latent)
            result = paste_back(result, swapped, matrix, self._mask)
            if enhancer is not None:
                result = enhancer.enhance(result, face.points, options.enhancer_blend)
        return result.copy() if result is frame else result
