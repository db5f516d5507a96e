"""Area resampling that reproduces PyTorch's ``interpolate(mode="area")`` exactly.

PyTorch's area mode is adaptive average pooling: output cell ``i`` of ``n_out`` averages
input cells ``floor(i * n / n_out)`` up to ``ceil((i + 1) * n / n_out)``. MTCNN's published
weights are run that way by the reference implementation, and matching it keeps our
detector's boxes identical to the reference's (OpenCV's INTER_AREA weights fractional
overlaps and moves boxes by pixels).

A summed-area table of the image, built once, serves every pyramid level and every crop:
each output pixel is four look-ups, in exact integer arithmetic.
"""

from __future__ import annotations

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


class AreaSampler:
    """Adaptive-average-pool resampling of one RGB uint8[H, W, 3] image."""

    def __init__(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        dtype = np.int32 if 255 * h * w < 2**31 else np.int64
        table = np.zeros((h + 1, w + 1, image.shape[2]), dtype)
        np.cumsum(image, axis=0, dtype=dtype, out=table[1:, 1:])
        np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
        self.table = table
        self.height, self.width = h, w

    def _pool(self, ys: np.ndarray, ye: np.ndarray, xs: np.ndarray, xe: np.ndarray) -> np.ndarray:
        """Means over windows: ``ys``/``ye`` int[K, Ho], ``xs``/``xe`` int[K, Wo] ->
        float32[K, Ho, Wo, C]."""
        k = np.arange(ys.shape[0])[:, None, None]
        t = self.table
        rows = t[ye] - t[ys]  # [K, Ho, W+1, C]
        total = (
            rows[k, np.arange(ys.shape[1])[None, :, None], xe[:, None, :]]
            - rows[k, np.arange(ys.shape[1])[None, :, None], xs[:, None, :]]
        )
        count = (ye - ys)[:, :, None] * (xe - xs)[:, None, :]
        return (total / count[..., None]).astype(np.float32)

    def resize(self, height: int, width: int) -> np.ndarray:
        """The whole image at ``height`` x ``width``: float32[height, width, C]."""
        zero = np.zeros(1, np.int64)
        ys, ye = _windows(zero, np.array([self.height]), height)
        xs, xe = _windows(zero, np.array([self.width]), width)
        return self._pool(ys, ye, xs, xe)[0]

    def crops(
        self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, size: int
    ) -> np.ndarray:
        """Regions ``[y0, y1) x [x0, x1)`` (int[K] each, inside the image, non-empty)
        resampled to float32[K, size, size, C]."""
        ys, ye = _windows(y0, y1 - y0, size)
        xs, xe = _windows(x0, x1 - x0, size)
        return self._pool(ys, ye, xs, xe)
