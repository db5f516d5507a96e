"""Verification metrics and the LFW pairs reader, on data with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from facerec.evaluation.lfw import find_image, read_pairs
from facerec.evaluation.metrics import (
    best_threshold,
    kfold_accuracy,
    roc_curve,
    threshold_at_far,
)


def test_separable_scores_are_perfect() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0])
    same = np.array([True, True, True, False, False, False])
    t, acc = best_threshold(scores, same)
    assert acc == 1.0 and 0.2 < t < 0.7
    assert roc_curve(scores, same).auc == pytest.approx(1.0)


def test_kfold_picks_threshold_out_of_fold() -> None:
    # Fold 0 alone would separate at 0.4; folds 1 and 2 separate at 0.275, and that is the
    # threshold fold 0 must be scored with (it then misreads its 0.35 impostor).
    fold0 = [0.6, 0.45, 0.35, 0.2]
    other = [0.6, 0.3, 0.25, 0.1]
    scores = np.array(fold0 + other + other)
    same = np.array([1, 1, 0, 0] * 3, bool)
    folds = np.repeat([0, 1, 2], 4)
    accs, thresholds = kfold_accuracy(scores, same, folds)
    assert thresholds[0] == pytest.approx(0.275)
    assert accs.tolist() == [0.75, 1.0, 1.0]


def test_roc_auc_of_inverted_scores_is_zero() -> None:
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    same = np.array([True, True, False, False])
    assert roc_curve(scores, same).auc == pytest.approx(0.0)


def test_threshold_at_far_allows_that_many_impostors() -> None:
    rng = np.random.default_rng(1)
    impostor = rng.normal(0, 0.1, 3000)
    genuine = rng.normal(0.7, 0.1, 3000)
    scores = np.r_[genuine, impostor]
    same = np.r_[np.ones(3000, bool), np.zeros(3000, bool)]
    t, tar = threshold_at_far(scores, same, 1e-3)
    assert (impostor >= t).sum() <= 3
    assert (impostor >= np.nextafter(np.sort(impostor)[-4], -1)).sum() == 4
    assert tar == pytest.approx(float((genuine >= t).mean()))


def test_read_pairs_and_find_image(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nA_B\t1\t2\nA_B\t1\tC_D\t3\nC_D\t1\t3\nC_D\t3\tA_B\t2\n")
    parsed = read_pairs(pairs)
    assert [(p.a, p.b, p.same, p.fold) for p in parsed] == [
        ("A_B_0001", "A_B_0002", True, 0),
        ("A_B_0001", "C_D_0003", False, 0),
        ("C_D_0001", "C_D_0003", True, 1),
        ("C_D_0003", "A_B_0002", False, 1),
    ]
    (tmp_path / "A_B").mkdir()
    (tmp_path / "A_B" / "A_B_0001.jpg").write_bytes(b"x")
    assert find_image(tmp_path, "A_B_0001") == tmp_path / "A_B" / "A_B_0001.jpg"
    with pytest.raises(InvalidArgumentError):
        find_image(tmp_path, "A_B_0002")


def test_read_pairs_rejects_a_short_file(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("10\t300\nA\t1\t2\n")
    with pytest.raises(InvalidArgumentError):
        read_pairs(pairs)
