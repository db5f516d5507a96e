"""The detector's numpy NMS keeps what the reference keeps, whatever its block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import facerec.detection.nms as nms_module
from facerec.detection.nms import nms
from training.mtcnn_reference import nms as reference_nms


def _random_boxes(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 100, (k, 2))
    size = rng.uniform(0, 40, (k, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    boxes[: k // 10, 2] = boxes[: k // 10, 0]  # empty boxes: their overlap is NaN
    scores = rng.random(k).astype(np.float32)
    scores[: k // 4] = 0.5  # ties
    return boxes, scores


@pytest.mark.parametrize("k", [1, 7, 90, 1500])
@pytest.mark.parametrize(
    ("mode", "inclusive"), [("union", False), ("min", True), ("union", True), ("min", False)]
)
def test_block_sizes_agree(
    monkeypatch: pytest.MonkeyPatch, k: int, mode: str, inclusive: bool
) -> None:
    boxes, scores = _random_boxes(k, seed=k)
    kept = {}
    for pairs in (1, 1000, 10**8):  # one row per block, some rows, every row at once
        monkeypatch.setattr(nms_module, "_BLOCK_PAIRS", pairs)
        kept[pairs] = nms(boxes, scores, 0.5, mode, inclusive)  # type: ignore[arg-type]
    assert np.array_equal(kept[1], kept[1000]) and np.array_equal(kept[1], kept[10**8])
    assert 0 < len(kept[1]) <= k


@pytest.mark.parametrize("k", [5, 60, 1500])
@pytest.mark.parametrize(("mode", "inclusive"), [("union", False), ("min", True)])
def test_matches_the_reference_mtcnn_nms(k: int, mode: str, inclusive: bool) -> None:
    """The combinations MTCNN uses: IoU on continuous areas, min-overlap on pixel areas."""
    boxes, scores = _random_boxes(k, seed=100 + k)
    boxes[: k // 10, 2] += 1.0  # the reference differs on empty boxes in union mode
    ours = nms(boxes, scores, 0.6, mode, inclusive)  # type: ignore[arg-type]
    ref = reference_nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.6, mode)  # type: ignore[arg-type]
    assert ours.tolist() == ref.tolist()


def test_known_case_and_empty() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 6, 6], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.95, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [2, 0, 3]
    assert nms(boxes, scores, 0.7).tolist() == [2, 0, 1, 3]
    assert nms(boxes, scores, 0.7, "min", pixel_inclusive=True).tolist() == [2, 3]
    assert nms(boxes[:0], scores[:0], 0.5).shape == (0,)
