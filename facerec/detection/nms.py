"""Greedy non-maximum suppression in numpy."""

from __future__ import annotations

from typing import Literal

import numpy as np

# Pairwise overlaps are computed for blocks of this many (row x column) pairs at a time:
# a few MB, whatever the number of boxes.
_BLOCK_PAIRS = 1 << 19


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
    convention) instead of ``x2 - x1``. The arithmetic (float64) and the keep-list are
    those of the usual one-box-at-a-time loop; only the overlaps come in blocks.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.intp)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)
    one = 1.0 if pixel_inclusive else 0.0
    return np.asarray(order[_greedy(b, threshold, mode, one)], dtype=np.intp)


def _overlap(
    b: np.ndarray, area: np.ndarray, rows: slice, cols: slice, mode: str, one: float
) -> np.ndarray:
    """Overlaps float64[rows, cols] of boxes ``b[rows]`` with boxes ``b[cols]``."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    r = (rows, None)
    w = np.maximum(0.0, np.minimum(x2[r], x2[cols]) - np.maximum(x1[r], x1[cols]) + one)
    h = np.maximum(0.0, np.minimum(y2[r], y2[cols]) - np.maximum(y1[r], y1[cols]) + one)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):  # empty boxes: NaN, dropped
        if mode == "min":
            return np.asarray(inter / np.minimum(area[r], area[cols]))
        return np.asarray(inter / (area[r] + area[cols] - inter))


def _area(b: np.ndarray, one: float) -> np.ndarray:
    return np.asarray((b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one))


def _greedy(b: np.ndarray, threshold: float, mode: str, one: float) -> np.ndarray:
    """Keep-list over boxes sorted best first. Each block of rows gets its overlaps with
    every later box at once; within the block, a kept row marks the boxes it suppresses."""
    n = b.shape[0]
    area = _area(b, one)
    dead = np.zeros(n, dtype=bool)
    keep: list[int] = []
    rows = max(1, _BLOCK_PAIRS // n)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        if dead[lo:hi].all():
            continue
        suppresses = ~(_overlap(b, area, slice(lo, hi), slice(lo, n), mode, one) <= threshold)
        for i in range(lo, hi):
            if not dead[i]:
                keep.append(i)
                dead[lo:] |= suppresses[i - lo]
    return np.asarray(keep, dtype=np.intp)
