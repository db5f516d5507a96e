"""FaceNet's triplet loss with online mining inside the batch (Schroff et al., 2015).

Embeddings are L2-normalised; distances are squared Euclidean; the loss of a triplet
(anchor a, positive p, negative n) is ``max(d(a, p) - d(a, n) + margin, 0)`` with
FaceNet's margin alpha = 0.2.

Mining, over every anchor-positive pair (a, p) of the batch:

- ``semi-hard`` (FaceNet): the negative closest to a among those farther than p,
  ``argmin d(a, n) subject to d(a, n) > d(a, p)``; when every negative is closer than p
  the farthest one is taken (TensorFlow's ``triplet_semihard_loss`` does the same), so
  training is not dominated by the hardest, often mislabelled, negatives;
- ``batch-hard`` (Hermans et al., 2017): per anchor, its farthest positive and closest
  negative.

The loss is averaged over the mined triplets, inactive ones (loss 0) included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Mining = Literal["semi-hard", "batch-hard"]
MININGS: tuple[Mining, ...] = ("semi-hard", "batch-hard")
FACENET_MARGIN = 0.2


def squared_distances(emb: Tensor) -> Tensor:
    """float[B, D] -> float[B, B] squared Euclidean distances, clamped at 0."""
    dot = emb @ emb.T
    sq = dot.diagonal()
    return (sq[:, None] - 2.0 * dot + sq[None, :]).clamp_min(0.0)


@dataclass(frozen=True)
class Triplets:
    """Indices into the batch, int64[T] each."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def mine_semi_hard(dist: Tensor, labels: Tensor) -> Triplets:
    """Semi-hard triplets for every anchor-positive pair of the batch (see the module
    docstring). ``dist`` float[B, B], ``labels`` int[B]. Anchors without any negative in
    the batch give no triplet."""
    positive_mask, negative_mask = _masks(labels)
    a, p = positive_mask.nonzero(as_tuple=True)
    d_ap = dist[a, p]
    d_an = dist[a]
    neg = negative_mask[a]
    farther = neg & (d_an > d_ap[:, None])
    big = torch.finfo(dist.dtype).max
    closest_farther = torch.where(farther, d_an, big).argmin(dim=1)
    farthest = torch.where(neg, d_an, -big).argmax(dim=1)
    n = torch.where(farther.any(dim=1), closest_farther, farthest)
    keep = neg.any(dim=1)
    return Triplets(a[keep], p[keep], n[keep])


def mine_batch_hard(dist: Tensor, labels: Tensor) -> Triplets:
    """Per anchor with a positive and a negative in the batch: its farthest positive and
    closest negative."""
    positive_mask, negative_mask = _masks(labels)
    big = torch.finfo(dist.dtype).max
    p = torch.where(positive_mask, dist, -big).argmax(dim=1)
    n = torch.where(negative_mask, dist, big).argmin(dim=1)
    keep = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    a = torch.arange(len(labels), device=labels.device)
    return Triplets(a[keep], p[keep], n[keep])


def mine(dist: Tensor, labels: Tensor, mining: Mining) -> Triplets:
    if mining == "semi-hard":
        return mine_semi_hard(dist, labels)
    if mining == "batch-hard":
        return mine_batch_hard(dist, labels)
    raise ValueError(f"mining must be one of {MININGS}, not {mining!r}")


@dataclass(frozen=True)
class TripletStats:
    """What one batch's mining found: ``triplets``, the fraction with a positive loss
    (``active``), and mean d(a, p) and d(a, n) over the triplets."""

    triplets: int
    active: float
    d_ap: float
    d_an: float


def triplet_loss(
    emb: Tensor, labels: Tensor, margin: float = FACENET_MARGIN, mining: Mining = "semi-hard"
) -> tuple[Tensor, TripletStats]:
    """The mean triplet loss of ``emb`` float[B, D] (L2-normalised rows) with ``labels``
    int[B], mined online; a batch without any triplet gives a zero loss that still has a
    gradient (so the step is a no-op, not an error)."""
    emb = emb.float()
    dist = squared_distances(emb)
    t = mine(dist.detach(), labels, mining)
    if len(t) == 0:
        return emb.sum() * 0.0, TripletStats(0, 0.0, 0.0, 0.0)
    d_ap = dist[t.anchor, t.positive]
    d_an = dist[t.anchor, t.negative]
    losses = (d_ap - d_an + margin).clamp_min(0.0)
    stats = TripletStats(
        len(t),
        float((losses > 0).float().mean()),
        float(d_ap.detach().mean()),
        float(d_an.detach().mean()),
    )
    return losses.mean(), stats
