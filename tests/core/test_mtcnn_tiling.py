"""Cutting MTCNN's work into cache-sized calls changes no result, bit for bit."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

import facerec.detection.mtcnn as mtcnn
from facerec.detection.mtcnn import MTCNNDetector, pnet_map_size
from facerec.models import model_path

SIZES = [(151, 151), (288, 384), (289, 385), (301, 97), (650, 1153), (13, 800)]


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(model_path("pnet"), model_path("rnet"), model_path("onet"), threads=1)


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("budget", [2_000, 40_000])
def test_tiles_cover_the_map_once_and_stay_inside_the_image(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, budget: int
) -> None:
    monkeypatch.setattr(mtcnn, "_PNET_CALL_PIXELS", budget)
    rows, cols = mtcnn._pnet_tiles(height, width)
    for spans, side in ((rows, height), (cols, width)):
        cells = pnet_map_size(side)
        assert spans[0][0] == 0 and spans[-1][1] == cells
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        # every tile but the last reads only pixels of the image; the last reaches its edge
        assert all(2 * hi + 10 <= side for _, hi in spans[:-1])
        assert 2 * spans[-1][1] + 10 >= side
    if height * width > budget:
        assert len(rows) * len(cols) > 1


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_tiled_pnet_maps_equal_the_whole_image_maps(
    monkeypatch: pytest.MonkeyPatch, detector: MTCNNDetector, height: int, width: int
) -> None:
    x = np.random.default_rng(height * width).standard_normal((2, 3, height, width))
    x = x.astype(np.float32)
    monkeypatch.setattr(mtcnn, "_PNET_CALL_PIXELS", 10**9)
    whole = detector._pnet_maps(x)
    monkeypatch.setattr(mtcnn, "_PNET_CALL_PIXELS", 2_000)
    tiled = detector._pnet_maps(x)
    for a, b in zip(whole, tiled, strict=True):
        assert a.shape == b.shape == (2, a.shape[1], pnet_map_size(height), pnet_map_size(width))
        assert np.array_equal(a, b)


def test_detections_do_not_depend_on_call_sizes(
    monkeypatch: pytest.MonkeyPatch, detector: MTCNNDetector, group_photo: np.ndarray
) -> None:
    big = cv2.resize(group_photo, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    images = [big, group_photo]
    monkeypatch.setattr(mtcnn, "_PNET_CALL_PIXELS", 10**9)
    monkeypatch.setattr(mtcnn, "_REFINE_CALL_CROPS", {24: 10**9, 48: 10**9})
    whole = detector.detect(images)
    monkeypatch.setattr(mtcnn, "_PNET_CALL_PIXELS", 5_000)
    monkeypatch.setattr(mtcnn, "_REFINE_CALL_CROPS", {24: 3, 48: 2})
    cut = detector.detect(images)
    assert [len(d) for d in whole] == [len(d) for d in cut]
    assert min(len(d) for d in whole) >= 3
    for a, b in zip(whole, cut, strict=True):
        assert np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.landmarks, b.landmarks)
