"""Face alignment: 5-point similarity warp or box crop with margin, to a square crop.

Both produce RGB uint8[size, size, 3] crops; which one a pipeline uses, and the template
and margin it uses, come from the embedding model's card.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from facerec.detection.types import Detections

AlignMethod = Literal["similarity", "box"]
ALIGN_METHODS: tuple[AlignMethod, ...] = ("similarity", "box")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping ``src`` onto ``dst``.

    ``src``, ``dst``: float[K, 2] point sets (K >= 2). Returns float64[2, 3] for
    ``cv2.warpAffine``. Umeyama's closed form, reflections excluded.
    """
    s = src.astype(np.float64)
    d = dst.astype(np.float64)
    s_mean, d_mean = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - s_mean, d - d_mean
    cov = dc.T @ sc / len(s)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var = (sc**2).sum() / len(s)
    scale = float((sigma * sign).sum() / var) if var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = d_mean - scale * rot @ s_mean
    return matrix


def warp_similarity(
    image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int
) -> np.ndarray:
    """Warp ``image`` so ``landmarks`` float[5, 2] land on ``template`` float[5, 2].

    Large faces are first shrunk with area averaging so the bilinear warp does not alias.
    """
    matrix = similarity_transform(landmarks, template)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    if scale < 0.5:
        shrink = scale * 1.5
        h, w = image.shape[:2]
        small = (max(1, round(w * shrink)), max(1, round(h * shrink)))
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        fx, fy = small[0] / w, small[1] / h
        matrix = similarity_transform(landmarks * np.array([fx, fy]), template)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def crop_box(image: np.ndarray, box: np.ndarray, margin: int, size: int) -> np.ndarray:
    """Crop ``box`` (x1, y1, x2, y2) grown by ``margin / 2`` px per side, clipped, resized."""
    h, w = image.shape[:2]
    x1 = int(max(np.floor(box[0] - margin / 2), 0))
    y1 = int(max(np.floor(box[1] - margin / 2), 0))
    x2 = int(min(np.ceil(box[2] + margin / 2), w))
    y2 = int(min(np.ceil(box[3] + margin / 2), h))
    if x2 <= x1 or y2 <= y1:
        x1, y1, x2, y2 = 0, 0, w, h
    patch = image[y1:y2, x1:x2]
    shrinking = patch.shape[0] > size or patch.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def align_faces(
    image: np.ndarray,
    detections: Detections,
    method: AlignMethod,
    template: Sequence[tuple[float, float]],
    margin: int,
    size: int,
) -> np.ndarray:
    """Every detected face of ``image`` as uint8[K, size, size, 3]."""
    out = np.empty((len(detections), size, size, 3), np.uint8)
    tmpl = np.asarray(template, dtype=np.float64) * (size / 160.0)
    for k in range(len(detections)):
        if method == "similarity":
            out[k] = warp_similarity(image, detections.landmarks[k], tmpl, size)
        else:
            out[k] = crop_box(image, detections.boxes[k], margin, size)
    return out
