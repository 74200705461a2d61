"""Placing one face onto another by its landmarks: a pure image operation (OpenCV and
numpy), independent of how the landmarks were found.

The target's landmarks are triangulated (Delaunay); each triangle of the source face is
warped affinely onto its target triangle; the warped face takes the target skin's colour
statistics (mean and spread in CIELAB) and is blended in with Poisson (seamless) cloning
inside the landmarks' convex hull. Work is limited to the face's bounding box.
"""

from __future__ import annotations

from typing import TypeAlias

import cv2
import numpy as np
from numpy.typing import NDArray

from pixelbus.faceswap_worker.engines.base import RGBImage

__all__ = ["Points", "composite_face", "delaunay_triangles", "transfer_colour", "warp_triangles"]

Points: TypeAlias = NDArray[np.float32]
"""N x 2 landmark coordinates (x, y) in pixels."""

_MARGIN = 3  # pixels around the face box, so that the clone mask never touches its edge
_MIN_TRIANGLE_AREA = 0.5  # square pixels; thinner triangles have no stable affine map
# A triangle that must grow this many times more than the face as a whole is a sliver in
# the source (a closed mouth or eye over an open one): stretching it smears, so skip it.
_MAX_RELATIVE_STRETCH = 4.0


def delaunay_triangles(points: Points, width: int, height: int) -> NDArray[np.int32]:
    """M x 3 indexes into ``points`` (which must lie within ``width`` x ``height``)."""
    subdivision = cv2.Subdiv2D((0, 0, width, height))
    index: dict[tuple[int, int], int] = {}
    for i, (x, y) in enumerate(points):
        key = (round(float(x)), round(float(y)))
        if key not in index:  # coincident landmarks would make degenerate triangles
            index[key] = i
            subdivision.insert((float(key[0]), float(key[1])))
    triangles = []
    for corners in subdivision.getTriangleList():
        keys = [(round(float(corners[j])), round(float(corners[j + 1]))) for j in (0, 2, 4)]
        if all(key in index for key in keys):  # skip triangles on Subdiv2D's outer frame
            triangles.append([index[key] for key in keys])
    return np.asarray(triangles, dtype=np.int32).reshape(-1, 3)


def _area(triangle: Points) -> float:
    (ax, ay), (bx, by), (cx, cy) = triangle
    return abs(float((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))) / 2


def warp_triangles(
    source: RGBImage,
    source_points: Points,
    target_points: Points,
    triangles: NDArray[np.int32],
    size: tuple[int, int],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """A float canvas of ``size`` (height, width) holding each source triangle warped
    onto the matching target triangle (target points are in canvas coordinates), and
    the canvas's coverage (0 to 1): triangles that are degenerate in the source, such as
    the inside of a closed mouth over an open one, are left uncovered."""
    canvas = np.zeros((*size, 3), dtype=np.float32)
    covered = np.zeros((*size, 1), dtype=np.float32)
    src_areas = np.array([_area(source_points[t]) for t in triangles], dtype=np.float64)
    dst_areas = np.array([_area(target_points[t]) for t in triangles], dtype=np.float64)
    usable = (src_areas >= _MIN_TRIANGLE_AREA) & (dst_areas >= _MIN_TRIANGLE_AREA)
    if not usable.any():
        return canvas, covered
    stretch = dst_areas / np.maximum(src_areas, _MIN_TRIANGLE_AREA)
    usable &= stretch <= _MAX_RELATIVE_STRETCH * float(np.median(stretch[usable]))
    for triangle in triangles[usable]:
        src, dst = source_points[triangle], target_points[triangle]
        sx, sy, sw, sh = cv2.boundingRect(src)
        dx, dy, dw, dh = cv2.boundingRect(dst)
        dw, dh = min(dw, size[1] - dx), min(dh, size[0] - dy)
        if dw <= 0 or dh <= 0:
            continue
        offset_dst = (dst - (dx, dy)).astype(np.float32)
        matrix = cv2.getAffineTransform((src - (sx, sy)).astype(np.float32), offset_dst)
        patch = cv2.warpAffine(
            source[sy : sy + sh, sx : sx + sw],
            matrix,
            (dw, dh),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        ).astype(np.float32)
        coverage = np.zeros((dh, dw, 1), dtype=np.float32)
        cv2.fillConvexPoly(coverage, np.round(offset_dst).astype(np.int32), (1.0,), cv2.LINE_AA)
        region = canvas[dy : dy + dh, dx : dx + dw]
        region *= 1.0 - coverage
        region += patch * coverage
        np.maximum(
            covered[dy : dy + dh, dx : dx + dw], coverage, out=covered[dy : dy + dh, dx : dx + dw]
        )
    return canvas, covered


def transfer_colour(image: RGBImage, reference: RGBImage, mask: NDArray[np.bool_]) -> RGBImage:
    """``image`` with the mean and spread of ``reference`` inside ``mask``, per CIELAB
    channel (the spread ratio is bounded so that a flat source is not blown up)."""
    if np.count_nonzero(mask) < 16:
        return image
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean, spread = lab[mask].mean(axis=0), lab[mask].std(axis=0)
    ref_mean, ref_spread = ref[mask].mean(axis=0), ref[mask].std(axis=0)
    ratio = np.clip(ref_spread / np.maximum(spread, 1.0), 0.5, 2.0)
    adjusted = (lab - mean) * ratio + ref_mean
    rgb: RGBImage = cv2.cvtColor(np.clip(adjusted, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return rgb


def composite_face(
    image: RGBImage, source: RGBImage, source_points: Points, target_points: Points
) -> RGBImage:
    """``image`` with the source face (at ``source_points``) blended over the face at
    ``target_points``; the two point sets must follow the same landmark scheme."""
    height, width = image.shape[:2]
    src = np.clip(source_points, 0, (source.shape[1] - 1, source.shape[0] - 1))
    dst = np.clip(target_points, 0, (width - 1, height - 1))
    x0, y0 = np.maximum(np.floor(dst.min(axis=0)).astype(int) - _MARGIN, 0)
    x1, y1 = np.minimum(np.ceil(dst.max(axis=0)).astype(int) + _MARGIN + 1, (width, height))
    local = (dst - (x0, y0)).astype(np.float32)
    size = (int(y1 - y0), int(x1 - x0))

    background = image[y0:y1, x0:x1]
    triangles = delaunay_triangles(local, size[1], size[0])
    canvas, covered = warp_triangles(source, src.astype(np.float32), local, triangles, size)
    # Where the source has no area (a closed mouth over an open one) the target shows.
    warped = np.clip(canvas + background * (1.0 - covered), 0, 255).astype(np.uint8)

    mask = np.zeros(size, dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(local).astype(np.int32)), (255,))
    # A slightly smaller mask keeps the blend's edge on skin rather than on the jaw
    # line's background; the zero border is what seamlessClone needs.
    shrink = max(size) // 60
    if shrink:
        mask = np.asarray(cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=shrink))
    mask[[0, -1], :] = 0
    mask[:, [0, -1]] = 0
    if np.count_nonzero(mask) == 0:
        return image
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=max(1, max(size) // 40)) > 0
    coloured = transfer_colour(warped, background, inner)

    mx, my, mw, mh = cv2.boundingRect(mask)
    # seamlessClone puts the mask's bounding box at centre - size // 2.
    centre = (int(x0 + mx + mw // 2), int(y0 + my + mh // 2))
    # It overwrites its mask argument: hand it a copy.
    blended = cv2.seamlessClone(coloured, image, mask.copy(), centre, cv2.NORMAL_CLONE)
    return np.asarray(blended, dtype=np.uint8)
