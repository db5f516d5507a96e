"""Open-set identification metrics over random galleries, from one score matrix.

Every probe is scored once against every subject of a pool of identities
(:func:`subject_scores`). A gallery of G subjects is a random G-subset of the pool; rather
than drawing a few galleries, the metrics are their exact expectation over all
G-subsets, which needs only counts: a stranger (non-mated probe, its identity not
enrolled) with ``n`` of its ``M`` candidate subjects scoring >= t meets at least one of
them in a random gallery of G with probability ``1 - C(M - n, G) / C(M, G)``
(hypergeometric). A mated probe (its subject enrolled) ranks first in a gallery of its
subject and G - 1 random others if none of the ``m`` others above its own score is drawn:
``C(M - m, G - 1) / C(M, G - 1)``.

- FPIR(t, G): the mean over non-mated probes of the first probability.
- DIR(t, G) (detection and identification rate): the mean over mated probes of
  ``[own score >= t]`` times the second probability; rank-1 is DIR at t = -inf.
- The threshold for a target FPIR at size G: the lowest t with FPIR(t, G) <= target.

This is FRVT's FPIR/FNIR (FNIR = 1 - DIR) averaged over galleries instead of measured on
one, so no draw can be lucky or unlucky. ``tests/core/test_openset_metrics.py`` checks it
against explicit random galleries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facerec.matching import Scoring, centroid, reduce_templates


def subject_scores(
    embeddings: np.ndarray,
    probes: np.ndarray,
    templates: Sequence[np.ndarray],
    scoring: Scoring,
    block: int = 1024,
) -> np.ndarray:
    """float32[P, S]: probe rows ``probes`` int[P] of ``embeddings`` float32[N, D] scored
    against each subject s, whose templates are the rows ``templates[s]`` int[K_s >= 1]."""
    x = embeddings.astype(np.float32)
    out = np.empty((len(probes), len(templates)), np.float32)
    if scoring.method == "centroid":
        cents = np.stack([centroid(x[t]) for t in templates])
        for lo in range(0, len(probes), block):
            out[lo : lo + block] = x[probes[lo : lo + block]] @ cents.T
        return out
    counts = np.array([len(t) for t in templates])
    kmax = int(counts.max())
    index = np.zeros((len(templates), kmax), np.intp)
    for s, t in enumerate(templates):
        index[s, : len(t)] = t
        index[s, len(t) :] = t[0]
    unused = np.arange(kmax)[None, :] >= counts[:, None]
    for lo in range(0, len(probes), block):
        sims = x[probes[lo : lo + block]] @ x[index.ravel()].T
        sims = sims.reshape(len(sims), len(templates), kmax)
        sims[:, unused] = -np.inf
        out[lo : lo + block] = reduce_templates(sims, counts, scoring)
    return out


_LOG_FACTORIAL = np.zeros(1)


def _log_factorial(n: np.ndarray) -> np.ndarray:
    """log(n!) for integer arrays ``n`` >= 0 (a table grown as needed)."""
    global _LOG_FACTORIAL
    top = int(n.max(initial=0))
    if top >= len(_LOG_FACTORIAL):
        _LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 2 * top + 2)))])
    table: np.ndarray = _LOG_FACTORIAL
    return np.asarray(table[n], np.float64)


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.asarray(_log_factorial(n) - _log_factorial(k) - _log_factorial(n - k))


def none_drawn(total: np.ndarray, marked: np.ndarray, draws: int | np.ndarray) -> np.ndarray:
    """Probability that ``draws`` items drawn without replacement from ``total`` include
    none of ``marked``: C(total - marked, draws) / C(total, draws), float64 (arrays
    broadcast; ``draws`` is clipped to ``total``)."""
    total = np.asarray(total, np.int64)
    marked = np.asarray(marked, np.int64)
    g = np.minimum(np.asarray(draws, np.int64), total)
    free = total - marked
    ok = free >= g
    safe_free = np.where(ok, free, g)
    logp = _log_comb(safe_free, g) - _log_comb(total, g)
    return np.where(ok, np.exp(np.minimum(logp, 0.0)), 0.0)


class NonMated:
    """Non-mated searches: each probe's scores against the subjects it could meet.

    ``scores`` float32[P, S] and ``own`` int[P]: the column of the probe's own subject
    (excluded), or -1 when it has none in the pool.
    """

    def __init__(self, scores: np.ndarray, own: np.ndarray, max_fpir: float = 1.0) -> None:
        p, s = scores.shape
        rows = np.asarray(scores, np.float64).copy()
        has_own = own >= 0
        rows[np.flatnonzero(has_own), own[has_own]] = -3.0  # below any cosine
        self.others = np.full(p, s) - has_own  # M: candidate subjects per probe
        self.top = rows.max(axis=1)  # best candidate score per probe
        # Thresholds for FPIRs up to max_fpir lie above the score that a fraction
        # 2 * max_fpir of all pairs reach (at G = 1 the FPIR is that fraction; it only grows
        # with G): only scores >= that floor are kept, each row sorted, shifted into its own
        # range [8r - 3, 8r + 1] and laid end to end, so one searchsorted counts every row's
        # scores above a threshold.
        valid = rows[rows > -2.0]
        self.floor = (
            float(np.quantile(valid, max(0.0, 1.0 - 2.0 * max_fpir))) if valid.size else -1.0
        )
        keep = rows >= self.floor
        kept = np.sort(np.where(keep, rows, -3.0), axis=1)
        counts = keep.sum(axis=1)
        self._row_end = np.cumsum(counts)
        self._offset = 8.0 * np.arange(p)
        shifted = kept + self._offset[:, None]
        self._flat = shifted[np.arange(s)[None, :] >= (s - counts)[:, None]]

    def __len__(self) -> int:
        return len(self.others)

    def above(self, threshold: float) -> np.ndarray:
        """int[P]: candidate subjects scoring >= ``threshold`` (>= the floor), per probe."""
        if threshold < self.floor:
            raise ValueError(f"threshold {threshold} is below the stored floor {self.floor}")
        start = np.searchsorted(self._flat, self._offset + threshold, side="left")
        return np.asarray(self._row_end - start)

    def false_alarm(self, threshold: float, gallery: int) -> np.ndarray:
        """float64[P]: per probe, the probability that a random gallery of ``gallery``
        subjects (its own excluded) holds one scoring >= ``threshold``."""
        return 1.0 - none_drawn(self.others, self.above(threshold), gallery)

    def fpir(self, threshold: float, gallery: int) -> float:
        """Expected FPIR at ``threshold`` for galleries of ``gallery`` subjects."""
        return float(self.false_alarm(threshold, gallery).mean())

    def threshold(self, fpir: float, gallery: int, iterations: int = 34) -> float:
        """The lowest threshold whose expected FPIR at ``gallery`` is <= ``fpir``
        (bisection to about 1e-10)."""
        lo, hi = self.floor, 1.0 + 1e-6  # FPIR(hi) = 0
        if self.fpir(lo, gallery) <= fpir:
            raise ValueError(f"FPIR {fpir} is reached below the stored floor {self.floor}")
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if self.fpir(mid, gallery) <= fpir:
                hi = mid
            else:
                lo = mid
        return hi


@dataclass
class Mated:
    """Mated searches: ``own`` float[Q] the score of each probe's own subject, ``above``
    int[Q] how many other subjects score higher, ``others`` int[Q] how many other
    subjects the pool holds."""

    own: np.ndarray
    above: np.ndarray
    others: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, own: np.ndarray) -> Mated:
        """From ``scores`` float32[Q, S] and each probe's own column ``own`` int[Q]."""
        rows = np.arange(len(own))
        own_score = scores[rows, own]
        above = (scores > own_score[:, None]).sum(axis=1)
        return cls(own_score.astype(np.float64), above, np.full(len(own), scores.shape[1] - 1))

    def __len__(self) -> int:
        return len(self.own)

    def first(self, gallery: int) -> np.ndarray:
        """float64[Q]: probability each probe's subject ranks first in a gallery of
        ``gallery`` subjects (its own and gallery - 1 random others)."""
        return none_drawn(self.others, self.above, max(gallery - 1, 0))

    def rank1(self, gallery: int) -> float:
        return float(self.first(gallery).mean())

    def dir(self, threshold: float, gallery: int) -> float:
        """Expected DIR: own subject first and scoring >= ``threshold``."""
        return float((self.first(gallery) * (self.own >= threshold)).mean())


def det_curve(
    nonmated: NonMated, mated: Mated, gallery: int, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR float64[T], FNIR float64[T]) at ``thresholds`` for galleries of ``gallery``
    (thresholds below the non-mated searches' floor count as the floor)."""
    first = mated.first(gallery)
    thresholds = np.maximum(thresholds, nonmated.floor)
    fpir = np.array([nonmated.fpir(float(t), gallery) for t in thresholds])
    fnir = np.array([1.0 - float((first * (mated.own >= t)).mean()) for t in thresholds])
    return fpir, fnir


def calibrate(
    nonmated: NonMated, gallery_sizes: Sequence[int], fpirs: Sequence[float]
) -> list[list[float]]:
    """Thresholds ``[size][fpir]``: for each gallery size the threshold of each FPIR."""
    return [[nonmated.threshold(f, g) for f in fpirs] for g in gallery_sizes]
