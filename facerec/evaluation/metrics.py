"""Verification metrics: ROC, k-fold accuracy with thresholds chosen out of fold, TAR@FAR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roc:
    """``fpr``/``tpr`` float64[T] at ``thresholds`` float64[T] (accept when score >= t),
    thresholds descending."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    @property
    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))


def roc_curve(scores: np.ndarray, same: np.ndarray) -> Roc:
    """ROC of similarity ``scores`` float[N] against labels ``same`` bool[N]."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return Roc(
        fpr=np.r_[0.0, fp / neg], tpr=np.r_[0.0, tp / pos], thresholds=np.r_[np.inf, s[distinct]]
    )


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; the threshold sits midway between the two
    scores it separates, so it generalises to unseen pairs."""
    s = np.sort(np.unique(scores))
    candidates = np.r_[s[0] - 1e-6, (s[:-1] + s[1:]) / 2, s[-1] + 1e-6]
    y = same.astype(bool)
    # accuracy(t) = (#same with score >= t + #diff with score < t) / n, for all t at once
    same_sorted = np.sort(scores[y])
    diff_sorted = np.sort(scores[~y])
    tp = len(same_sorted) - np.searchsorted(same_sorted, candidates, side="left")
    tn = np.searchsorted(diff_sorted, candidates, side="left")
    acc = np.asarray(tp + tn, dtype=np.float64) / len(scores)
    i = int(np.argmax(acc))
    return float(candidates[i]), float(acc[i])


def kfold_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy with the threshold chosen on the other folds, and those thresholds."""
    accs, thresholds = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        t, _ = best_threshold(scores[train], same[train])
        predicted = scores[test] >= t
        accs.append(float(np.mean(predicted == same[test].astype(bool))))
        thresholds.append(t)
    return np.asarray(accs), np.asarray(thresholds)


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(threshold, TAR) for the lowest threshold whose false accept rate is <= ``far``."""
    y = same.astype(bool)
    impostor = np.sort(scores[~y])[::-1]
    allowed = int(np.floor(far * len(impostor)))
    # Accept when score >= t; t just above the (allowed+1)-th highest impostor score.
    t = float(np.nextafter(impostor[allowed], np.inf)) if allowed < len(impostor) else -np.inf
    tar = float(np.mean(scores[y] >= t))
    return t, tar


def equal_error_rate(roc: Roc) -> tuple[float, float]:
    """(EER, threshold): where the false accept rate meets the false reject rate
    (1 - TAR), linearly interpolated between the two ROC points that straddle it; the
    threshold is that of the first point past the crossing."""
    fnr = 1.0 - roc.tpr
    i = int(np.argmax(roc.fpr >= fnr))  # fpr rises and fnr falls along the curve
    if i == 0:
        return float(roc.fpr[0]), float(roc.thresholds[0])
    d0, d1 = fnr[i - 1] - roc.fpr[i - 1], fnr[i] - roc.fpr[i]  # d0 > 0 >= d1
    w = d0 / (d0 - d1)
    eer = roc.fpr[i - 1] + w * (roc.fpr[i] - roc.fpr[i - 1])
    return float(eer), float(roc.thresholds[i])
