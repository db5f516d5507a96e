"""The detector interface and its result type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one image.

    ``boxes`` float32[K, 4] as (x1, y1, x2, y2) pixels, ``scores`` float32[K],
    ``landmarks`` float32[K, 5, 2] as (x, y): left eye, right eye, nose, mouth left,
    mouth right (left/right as seen in the image).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, index: np.ndarray | Sequence[int]) -> Detections:
        idx = np.asarray(index, dtype=np.intp)
        return Detections(self.boxes[idx], self.scores[idx], self.landmarks[idx])


class FaceDetector(Protocol):
    """Anything that finds faces: in-process ONNX Runtime, or a Triton client."""

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """``images``: RGB uint8[H, W, 3] each (sizes may differ); one result per image."""
        ...
