"""Area resampling that reproduces PyTorch's ``interpolate(mode="area")``.

PyTorch's area mode is adaptive average pooling: output cell ``i`` of ``n_out`` averages
input cells ``floor(i * n / n_out)`` up to ``ceil((i + 1) * n / n_out)``. MTCNN's published
weights are run that way by the reference implementation, and matching it keeps our
detector's boxes identical to the reference's (OpenCV's INTER_AREA weights fractional
overlaps and moves boxes by pixels).

A summed-area table of the image, built once, serves every pyramid level and every crop:
each output pixel is four look-ups, in exact integer arithmetic, and one float32 division;
the result is PyTorch's to the last bit or one unit in the last place (PyTorch divides in
another order).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np


def _windows(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooling windows [lo, hi) of ``size`` cells over segments ``[start, start + length)``.

    ``start``, ``length``: int[K]. Returns two int[K, size] arrays.
    """
    i = np.arange(size)
    n = length[:, None]
    lo = start[:, None] + (i * n) // size
    hi = start[:, None] + ((i + 1) * n + size - 1) // size
    return lo, hi


@functools.lru_cache(maxsize=256)
def _level_plan(
    height: int, width: int, out_h: int, out_w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column windows and cell sizes (float32[out_h, out_w, 1]) of one pyramid
    level; images of one size share them."""
    zero = np.zeros(1, np.int64)
    ys, ye = (v[0] for v in _windows(zero, np.array([height]), out_h))
    xs, xe = (v[0] for v in _windows(zero, np.array([width]), out_w))
    count = ((ye - ys)[:, None] * (xe - xs)[None, :]).astype(np.float32)[:, :, None]
    plan = (ys, ye, xs, xe, count)
    for a in plan:
        a.setflags(write=False)
    return plan


class AreaSampler:
    """Adaptive-average-pool resampling of one RGB uint8[H, W, 3] image.

    A summed-area table (OpenCV's ``integral``, int32 or, for huge images, float64 which
    is still exact for these integer sums) serves every pyramid level and every crop. A
    resized level takes whole rows of the table, then whole rows of its transpose, so both
    passes read memory in order.
    """

    def __init__(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        depth = cv2.CV_32S if 255 * h * w < 2**31 else cv2.CV_64F
        self.table = cv2.integral(np.ascontiguousarray(image), sdepth=depth)
        if self.table.ndim == 2:
            self.table = self.table[:, :, None]
        self.height, self.width = h, w

    def resize(self, height: int, width: int) -> np.ndarray:
        """The whole image at ``height`` x ``width``: float32[height, width, C]."""
        ys, ye, xs, xe, count = _level_plan(self.height, self.width, height, width)
        flat = self.table.reshape(self.table.shape[0], -1)
        rows = np.take(flat, ye, axis=0)
        rows -= np.take(flat, ys, axis=0)
        rows3 = rows.reshape(height, self.width + 1, -1)
        total = np.take(rows3, xe, axis=1)
        total -= np.take(rows3, xs, axis=1)
        out = total.astype(np.float32)
        out /= count
        return np.asarray(out, dtype=np.float32)

    def crops(
        self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, size: int
    ) -> np.ndarray:
        """Regions ``[y0, y1) x [x0, x1)`` (int[K] each, inside the image, non-empty)
        resampled to float32[K, size, size, C]."""
        flat = self.table.reshape(-1, self.table.shape[2])
        stride = self.width + 1
        ys, ye = _windows(y0, y1 - y0, size)
        xs, xe = _windows(x0, x1 - x0, size)
        top, bottom = (ys * stride)[:, :, None], (ye * stride)[:, :, None]
        left, right = xs[:, None, :], xe[:, None, :]
        total = np.take(flat, bottom + right, axis=0)
        total -= np.take(flat, top + right, axis=0)
        total -= np.take(flat, bottom + left, axis=0)
        total += np.take(flat, top + left, axis=0)
        count = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).astype(np.float32)
        out = total.astype(np.float32)
        out /= count[..., None]
        return np.asarray(out, dtype=np.float32)
