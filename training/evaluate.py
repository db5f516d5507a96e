"""Verification on held-out pairs with the PyTorch model: flip-averaged embeddings (FP32),
pair scores, and accuracy at a threshold chosen on other pairs than those scored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facerec.evaluation.metrics import best_threshold, roc_curve, threshold_at_far
from facerec.evaluation.pairs import Pair
from training.augment import standardize, to_float_nchw


@torch.no_grad()
def embed_crops(
    net: Callable[[Tensor], Tensor],
    crops: Tensor,
    indices: Sequence[int] | np.ndarray,
    batch: int = 128,
    flip: bool = True,
    channels_last: bool = False,
) -> np.ndarray:
    """float32[len(indices), D] unit embeddings of ``crops[indices]`` (uint8[N, S, S, 3]
    on the network's device), the mirror's embedding added and renormalised when ``flip``
    (what the serving pipeline does). Runs in float32, whatever autocast is around."""
    idx = torch.as_tensor(np.asarray(indices, np.int64), device=crops.device)
    out = []
    with torch.autocast(crops.device.type, enabled=False):
        for lo in range(0, len(idx), batch):
            x = standardize(to_float_nchw(crops[idx[lo : lo + batch]]))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            e = net(x)
            if flip:
                e = F.normalize(e + net(x.flip(3)), dim=1)
            out.append(e.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def pair_scores(
    emb: np.ndarray, key_index: dict[str, int], pairs: Sequence[Pair]
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores float64[P] and labels bool[P] of ``pairs`` (keys into ``emb``'s rows
    through ``key_index``)."""
    a = emb[[key_index[p.a] for p in pairs]]
    b = emb[[key_index[p.b] for p in pairs]]
    return (a * b).sum(axis=1).astype(np.float64), np.array([p.same for p in pairs])


def verification(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Accuracy at the best threshold on these pairs themselves (for model selection, not
    for reporting), ROC AUC, and the means of same/different scores."""
    t, acc = best_threshold(scores, same)
    return {
        "accuracy_best_threshold": acc,
        "threshold": t,
        "auc": roc_curve(scores, same).auc,
        "same_mean": float(scores[same].mean()),
        "different_mean": float(scores[~same].mean()),
    }


def heldout_accuracy(
    scores: np.ndarray,
    same: np.ndarray,
    calibration_scores: np.ndarray,
    calibration_same: np.ndarray,
) -> dict[str, Any]:
    """Accuracy of ``scores`` at the threshold that maximises accuracy on the calibration
    pairs (never on the pairs scored), plus those pairs' AUC and TAR at FAR = 1e-3."""
    t, calib_acc = best_threshold(calibration_scores, calibration_same)
    _, tar = threshold_at_far(scores, same, 1e-3)
    return {
        "accuracy": float(np.mean((scores >= t) == same)),
        "threshold": t,
        "calibration_accuracy": calib_acc,
        "auc": roc_curve(scores, same).auc,
        "tar_at_far_1e-3": tar,
        "pairs": len(scores),
    }
