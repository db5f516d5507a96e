"""Loading facenet-pytorch's MTCNN state dicts and the PyTorch-eager reference detector.

Needs torch (the ``export`` extra). Tests that read the weights are skipped unless
``$FACEREC_HOME/weights/{pnet,rnet,onet}.pt`` exist (FACEREC_HOME defaults to
``~/.cache/facerec``). Corrupted variants are small copies written under ``tmp_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from export.mtcnn_weights import ConversionError, load_mtcnn
from tests.support.data import lfw_image
from training.mtcnn import ONet, PNet, RNet
from training.mtcnn_reference import EagerMTCNN, nms

NETS = ("pnet", "rnet", "onet")
LFW_FACES = ("Aaron_Peirsol_0001", "Aaron_Eckhart_0001")


def _weights_dir() -> Path:
    home = Path(os.environ.get("FACEREC_HOME", Path.home() / ".cache" / "facerec"))
    return home / "weights"


@pytest.fixture(scope="module")
def weight_paths() -> dict[str, Path]:
    paths = {name: _weights_dir() / f"{name}.pt" for name in NETS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"MTCNN weights not present: {', '.join(missing)}")
    return paths


@pytest.fixture(scope="module")
def nets(weight_paths: dict[str, Path]) -> tuple[PNet, RNet, ONet]:
    return load_mtcnn(weight_paths["pnet"], weight_paths["rnet"], weight_paths["onet"])


@pytest.fixture(scope="module")
def detector(nets: tuple[PNet, RNet, ONet]) -> EagerMTCNN:
    return EagerMTCNN(*nets)


def _raw_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state)


def _load_with(
    weight_paths: dict[str, Path], tmp_path: Path, name: str, state: dict[str, torch.Tensor]
) -> None:
    """Run ``load_mtcnn`` with ``name``'s file replaced by ``state`` saved under tmp_path."""
    paths = dict(weight_paths)
    paths[name] = tmp_path / f"{name}.pt"
    torch.save(state, paths[name])
    load_mtcnn(paths["pnet"], paths["rnet"], paths["onet"])


def test_strict_load_uses_every_key(
    weight_paths: dict[str, Path], nets: tuple[PNet, RNet, ONet]
) -> None:
    for name, net in zip(NETS, nets, strict=True):
        assert not net.training
        raw = _raw_state(weight_paths[name])
        loaded = net.state_dict()
        assert set(raw) == set(loaded), name
        for key, value in raw.items():
            assert torch.equal(loaded[key], value), f"{name}: {key}"


def test_missing_key_raises(weight_paths: dict[str, Path], tmp_path: Path) -> None:
    state = _raw_state(weight_paths["rnet"])
    del state["dense4.bias"]
    with pytest.raises(ConversionError, match=r"missing key 'dense4\.bias'.*\(128,\)"):
        _load_with(weight_paths, tmp_path, "rnet", state)


def test_extra_key_raises(weight_paths: dict[str, Path], tmp_path: Path) -> None:
    state = _raw_state(weight_paths["pnet"])
    state["conv5.weight"] = torch.zeros(2, 32, 1, 1)
    with pytest.raises(ConversionError, match=r"unexpected key 'conv5\.weight'.*\(2, 32, 1, 1\)"):
        _load_with(weight_paths, tmp_path, "pnet", state)


def test_wrong_shape_raises(weight_paths: dict[str, Path], tmp_path: Path) -> None:
    state = _raw_state(weight_paths["onet"])
    state["dense5.weight"] = state["dense5.weight"].t().contiguous()
    with pytest.raises(
        ConversionError, match=r"'dense5\.weight' has shape \(1152, 256\).*expects \(256, 1152\)"
    ):
        _load_with(weight_paths, tmp_path, "onet", state)


def test_not_a_state_dict_raises(weight_paths: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "pnet.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ConversionError, match="expected a state dict"):
        load_mtcnn(path, weight_paths["rnet"], weight_paths["onet"])


def test_network_output_shapes(nets: tuple[PNet, RNet, ONet]) -> None:
    pnet, rnet, onet = nets
    with torch.inference_mode():
        reg, prob = pnet(torch.zeros(2, 3, 37, 51))
        assert reg.shape == (2, 4, 14, 21) and prob.shape == (2, 2, 14, 21)
        torch.testing.assert_close(prob.sum(dim=1), torch.ones(2, 14, 21))
        reg, prob = rnet(torch.zeros(3, 3, 24, 24))
        assert reg.shape == (3, 4) and prob.shape == (3, 2)
        reg, marks, prob = onet(torch.zeros(3, 3, 48, 48))
        assert reg.shape == (3, 4) and marks.shape == (3, 10) and prob.shape == (3, 2)


@pytest.mark.parametrize("key", LFW_FACES)
def test_eager_reference_finds_one_face(detector: EagerMTCNN, key: str) -> None:
    image = lfw_image(key)
    assert image.shape == (250, 250, 3)
    boxes, scores, landmarks = detector.detect(image)
    assert boxes.shape == (1, 4) and scores.shape == (1,) and landmarks.shape == (1, 5, 2)
    assert boxes.dtype == scores.dtype == landmarks.dtype == np.float32
    assert scores[0] > 0.95
    x1, y1, x2, y2 = boxes[0]
    # The 150x150 LFW crop sits at (50, 50)-(200, 200); its face is roughly centred.
    assert 50 <= x1 < 125 < x2 <= 200 and 40 <= y1 < 125 < y2 <= 210
    assert 70 <= x2 - x1 <= 130
    marks = landmarks[0]
    assert np.all((marks[:, 0] > x1) & (marks[:, 0] < x2) & (marks[:, 1] > y1) & (marks[:, 1] < y2))
    (lex, ley), (rex, rey), (_, nose_y), (lmx, lmy), (rmx, rmy) = marks
    assert lex < rex and lmx < rmx
    assert max(ley, rey) < nose_y < min(lmy, rmy)


def test_eager_reference_no_face(detector: EagerMTCNN) -> None:
    boxes, scores, landmarks = detector.detect(np.full((120, 160, 3), 128, np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and landmarks.shape == (0, 5, 2)
    tiny = detector.detect(np.zeros((8, 8, 3), np.uint8))  # smaller than any pyramid level
    assert [a.shape for a in tiny] == [(0, 4), (0,), (0, 5, 2)]


def test_nms_union_and_min() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [2.0, 2.0, 6.0, 6.0], [20, 20, 30, 30]]
    )
    scores = torch.tensor([0.9, 0.8, 0.95, 0.5])
    # IoU(0, 1) = 81 / 119 = 0.68; the small box 2 is inside 0 (IoU 0.16, Min-overlap 1.0).
    assert nms(boxes, scores, 0.5, "union").tolist() == [2, 0, 3]
    assert nms(boxes, scores, 0.7, "union").tolist() == [2, 0, 1, 3]
    assert nms(boxes, scores, 0.7, "min").tolist() == [2, 3]
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0
    # Exact score ties: the earlier candidate is kept.
    tied = torch.tensor([0.9, 0.9, 0.9, 0.5])
    assert nms(boxes, tied, 0.5, "union").tolist() == [0, 2, 3]
