"""Greedy non-maximum suppression in numpy."""

from __future__ import annotations

from typing import Literal

import numpy as np


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    mode: Literal["union", "min"] = "union",
    pixel_inclusive: bool = False,
) -> np.ndarray:
    """Indices of the boxes kept, best score first.

    ``boxes`` float[K, 4] (x1, y1, x2, y2), ``scores`` float[K]. A box is dropped when its
    overlap with a kept box is above ``threshold``; overlap is intersection over union, or
    over the smaller area for ``mode="min"``. ``pixel_inclusive`` counts ``x2 - x1 + 1``
    pixels per side (the original MTCNN convention) instead of ``x2 - x1``.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.intp)
    one = 1.0 if pixel_inclusive else 0.0
    b = boxes.astype(np.float64)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)
