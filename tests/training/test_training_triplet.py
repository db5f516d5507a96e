"""The triplet miners against brute force over every triplet of small random batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.triplet import (  # noqa: E402
    mine_batch_hard,
    mine_semi_hard,
    squared_distances,
    triplet_loss,
)


def _batch(seed: int, n: int = 12, ids: int = 4, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, dim, generator=g, dtype=torch.float64)
    emb = torch.nn.functional.normalize(raw, dim=1)
    labels = torch.randint(0, ids, (n,), generator=g)
    return emb, labels


def brute_semi_hard(d: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, int]]:
    """The rule written out loop by loop: for each (a, p), the closest negative farther
    than p; if there is none, the farthest negative."""
    out = []
    n = len(labels)
    for a, p in itertools.product(range(n), range(n)):
        if a == p or labels[a] != labels[p]:
            continue
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if not negatives:
            continue
        farther = [k for k in negatives if d[a, k] > d[a, p]]
        if farther:
            best = min(farther, key=lambda k: (d[a, k], k))
        else:
            best = max(negatives, key=lambda k: (d[a, k], -k))
        out.append((a, p, best))
    return out


def brute_batch_hard(d: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, int]]:
    out = []
    n = len(labels)
    for a in range(n):
        pos = [k for k in range(n) if k != a and labels[k] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if pos and neg:
            out.append((a, max(pos, key=lambda k: d[a, k]), min(neg, key=lambda k: d[a, k])))
    return out


def _as_list(t: object) -> list[tuple[int, int, int]]:
    return list(
        zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True)  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("seed", range(40))
def test_semi_hard_matches_brute_force(seed: int) -> None:
    emb, labels = _batch(seed, n=6 + seed % 9, ids=2 + seed % 4)
    d = squared_distances(emb)
    expected = brute_semi_hard(d.numpy(), labels.numpy())
    assert sorted(_as_list(mine_semi_hard(d, labels))) == sorted(expected)
    loss, stats = triplet_loss(emb, labels, margin=0.2)
    if expected:
        ref = np.mean([max(d[a, p] - d[a, n] + 0.2, 0.0) for a, p, n in expected])
        assert float(loss) == pytest.approx(float(ref), abs=1e-6)
        assert stats.triplets == len(expected)
    else:
        assert float(loss) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_batch_hard_matches_brute_force(seed: int) -> None:
    emb, labels = _batch(100 + seed, n=5 + seed % 8, ids=2 + seed % 3)
    d = squared_distances(emb)
    assert sorted(_as_list(mine_batch_hard(d, labels))) == sorted(
        brute_batch_hard(d.numpy(), labels.numpy())
    )


def test_semi_hard_triplets_are_semi_hard_when_one_exists() -> None:
    """A constructed batch: the chosen negative lies between d(a, p) and d(a, p) + margin
    and the loss is the margin term of exactly those triplets."""
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    d = squared_distances(emb)
    t = mine_semi_hard(d, labels)
    # anchor 0, positive 1 (d=0.4): negatives 2 (d=0.8) and 3 (d=4): 2 is the closest farther.
    assert (0, 1, 2) in _as_list(t)


def test_distances_and_gradient() -> None:
    emb, labels = _batch(7, n=16, ids=4)
    d = squared_distances(emb)
    ref = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(d, ref, atol=1e-12)
    x = emb.clone().requires_grad_(True)
    loss, _ = triplet_loss(x, labels, mining="batch-hard")
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_one_identity_gives_no_triplets_and_a_zero_loss() -> None:
    emb, _ = _batch(3, n=6)
    loss, stats = triplet_loss(emb.requires_grad_(True), torch.zeros(6, dtype=torch.long))
    assert stats.triplets == 0 and float(loss) == 0.0
    loss.backward()
