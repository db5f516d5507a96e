"""Detection on images of any size: each searched at a bounded size."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facerec.detection.types import Detections, FaceDetector


def detect_bounded(
    detector: FaceDetector, images: Sequence[np.ndarray], max_side: int
) -> list[Detections]:
    """``detector`` on ``images``, each searched at most ``max_side`` pixels long.

    A longer image is downscaled (area) for the search and its boxes and landmarks scaled
    back to its own pixel coordinates.
    """
    factors = [min(1.0, max_side / max(img.shape[:2])) for img in images]
    small = [
        img
        if f == 1.0
        else cv2.resize(
            img,
            (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
            interpolation=cv2.INTER_AREA,
        )
        for img, f in zip(images, factors, strict=True)
    ]
    found = detector.detect(small)
    return [
        det if f == 1.0 else Detections(det.boxes / f, det.scores, det.landmarks / f)
        for det, f in zip(found, factors, strict=True)
    ]
