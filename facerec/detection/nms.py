"""Greedy non-maximum suppression in numpy."""

from __future__ import annotations

from typing import Literal

import numpy as np

# Up to this many boxes the pairwise overlaps are computed at once (a few MB); past it,
# one row at a time.
_MATRIX_MAX_BOXES = 1024


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    mode: Literal["union", "min"] = "union",
    pixel_inclusive: bool = False,
) -> np.ndarray:
    """Indices of the boxes kept, best score first.

    ``boxes`` float[K, 4] (x1, y1, x2, y2), ``scores`` float[K]. A box is dropped when its
    overlap with a kept box is above ``threshold`` (or not a number); overlap is
    intersection over union, or over the smaller area for ``mode="min"``.
    ``pixel_inclusive`` counts ``x2 - x1 + 1`` pixels per side (the original MTCNN
    convention) instead of ``x2 - x1``. Both strategies below do the same float64
    arithmetic, so they keep the same boxes.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.intp)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)
    one = 1.0 if pixel_inclusive else 0.0
    if b.shape[0] <= _MATRIX_MAX_BOXES:
        keep = _greedy_matrix(b, threshold, mode, one)
    else:
        keep = _greedy_rows(b, threshold, mode, one)
    return np.asarray(order[keep], dtype=np.intp)


def _overlap(
    b: np.ndarray, area: np.ndarray, i: int | slice, rest: np.ndarray | slice, mode: str, one: float
) -> np.ndarray:
    """Overlap of boxes ``b[i]`` (rows) with ``b[rest]`` (columns)."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    col = (slice(None), None) if isinstance(i, slice) else (i,)
    w = np.maximum(0.0, np.minimum(x2[col], x2[rest]) - np.maximum(x1[col], x1[rest]) + one)
    h = np.maximum(0.0, np.minimum(y2[col], y2[rest]) - np.maximum(y1[col], y1[rest]) + one)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):  # empty boxes: NaN, dropped
        if mode == "min":
            return np.asarray(inter / np.minimum(area[col], area[rest]))
        return np.asarray(inter / (area[col] + area[rest] - inter))


def _area(b: np.ndarray, one: float) -> np.ndarray:
    return np.asarray((b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one))


def _greedy_matrix(b: np.ndarray, threshold: float, mode: str, one: float) -> np.ndarray:
    """Keep-list over boxes sorted best first, from all pairwise overlaps at once."""
    suppresses = ~(_overlap(b, _area(b, one), slice(None), slice(None), mode, one) <= threshold)
    dead = np.zeros(b.shape[0], dtype=bool)
    keep: list[int] = []
    for i in range(b.shape[0]):
        if not dead[i]:
            keep.append(i)
            dead |= suppresses[i]
    return np.asarray(keep, dtype=np.intp)


def _greedy_rows(b: np.ndarray, threshold: float, mode: str, one: float) -> np.ndarray:
    """The same keep-list, one kept box's overlaps at a time (memory linear in K)."""
    area = _area(b, one)
    order = np.arange(b.shape[0])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[_overlap(b, area, i, rest, mode, one) <= threshold]
    return np.asarray(keep, dtype=np.intp)
