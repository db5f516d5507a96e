"""A fused model's weight, chosen on one half of LFW's identities and reported on the other.

``facerec bench lfw-openset --model A+B --choose-weight`` runs this on the benchmark's
embeddings (each image embedded once by the fused pipeline; the parts' unit embeddings are
recovered from the fused ones, :func:`facerec.fusion.split_embeddings`):

1. **Normalisation.** On the calibration half, each part's impostor distribution: mean and
   standard deviation of its cosine over every different-person image pair of that half.
2. **Weight.** For each ``w`` of a grid, the fused embeddings with that weight
   (:meth:`facerec.fusion.FusionSpec.part_weights`) are searched as the open-set protocol
   searches them (:func:`facerec.evaluation.openset_lfw.searches`: centroid scoring, up to
   3 enrolment images); the criterion is the mean of DIR at FPIR 1e-3 and 1e-2 for
   galleries of :data:`CRITERION_GALLERY`, thresholds set on that half's own strangers.
   The calibration half sees nothing of the other.
3. **Report.** On the other half, with the chosen weight and the calibration half's
   normalisation, the thresholds calibrated on the calibration half (the benchmark's ``calibrated``
   figures: measured FPIR and DIR), at G = 100, 1,000 and all.

It runs both ways (choose on half 0, report on half 1, and the reverse); the card takes the
weight and normalisation of half 0, the report of that choice is on half 1, and the
figures pooled over both directions are the honest counterpart of the benchmark's pooled
table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from facerec.evaluation.lfw_faces import LfwFaces
from facerec.evaluation.openset_lfw import (
    Identities,
    evaluate_fold,
    pooled,
    searches,
    split_halves,
    table_for,
)
from facerec.fusion import FusionSpec, PartNormalisation, fuse_embeddings, split_embeddings
from facerec.matching import Scoring
from facerec.models import ModelCard

GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The z-score weights tried: 0.05 to 0.95."""
CRITERION_GALLERY = 1000
CRITERION_FPIRS = (1e-3, 1e-2)
REPORT_FPIRS = (1e-2, 1e-3)
ENROLMENT = 3


def impostor_stats(x: np.ndarray, ids: Identities, pool: np.ndarray) -> PartNormalisation:
    """Mean and standard deviation of the cosine of unit embeddings ``x`` over every pair
    of images of different identities of ``pool``."""
    rows = np.concatenate([ids.images[i] for i in pool])
    owner = np.concatenate([np.full(len(ids.images[i]), i) for i in pool])
    v = x[rows].astype(np.float64)
    total, total_sq, count = 0.0, 0.0, 0
    for lo in range(0, len(v), 1024):
        sims = v[lo : lo + 1024] @ v.T
        here = np.arange(lo, min(lo + 1024, len(v)))
        keep = (np.arange(len(v))[None, :] > here[:, None]) & (
            owner[here][:, None] != owner[None, :]
        )
        chosen = sims[keep]
        total += float(chosen.sum())
        total_sq += float((chosen**2).sum())
        count += int(chosen.size)
    mean = total / count
    return PartNormalisation(mean, float(np.sqrt(max(total_sq / count - mean**2, 0.0))))


def _criterion(faces: LfwFaces, ids: Identities, pool: np.ndarray, k: int) -> dict[str, float]:
    """DIR at :data:`CRITERION_FPIRS` for G = :data:`CRITERION_GALLERY` on ``pool`` alone,
    thresholds from its own non-mated searches."""
    s = searches(faces, ids, pool, ENROLMENT, Scoring("centroid", k))
    gallery = min(CRITERION_GALLERY, len(pool) - 1)
    return {
        f"{f:g}": s.mated.dir(s.nonmated.threshold(f, gallery), gallery) for f in CRITERION_FPIRS
    }


def _report(
    faces: LfwFaces, ids: Identities, calibration: np.ndarray, evaluation: np.ndarray, k: int
) -> dict[str, Any]:
    """Thresholds from ``calibration``'s strangers, applied to ``evaluation``: per gallery
    size the benchmark's pooled figures (here of one fold)."""
    scoring = Scoring("centroid", k)
    cal = searches(faces, ids, calibration, ENROLMENT, scoring, mated=False)
    table = table_for(cal.nonmated, scoring.method)
    ev = searches(faces, ids, evaluation, ENROLMENT, scoring)
    out = {}
    for label, g in (("100", 100), ("1000", 1000), ("all", len(evaluation))):
        out[label] = pooled([evaluate_fold(ev, table, g, REPORT_FPIRS)], REPORT_FPIRS)
    return out


def choose_weight(
    faces: LfwFaces,
    card: ModelCard,
    seed: int = 0,
    k: int = 2,
    merge: bool = True,
    grid: Sequence[float] = GRID,
) -> dict[str, Any]:
    """The weight search and its held-out report (see the module docstring); ``faces``
    embedded by ``card``'s fused model."""
    spec = FusionSpec.from_dict(card.raw["fusion"])
    sizes = [p.embedding_size for p in card.parts]
    parts = split_embeddings(faces.embeddings, sizes, card.part_weights)
    ids = Identities.of(faces, merge=merge)
    half = split_halves(ids, seed)
    pools = [np.flatnonzero(half == h) for h in (0, 1)]
    directions = []
    for h in (0, 1):
        norm = tuple(impostor_stats(x, ids, pools[h]) for x in parts)
        base = FusionSpec(spec.parts, norm, spec.weight)
        rows: list[dict[str, Any]] = []
        scores: list[float] = []
        for w in grid:
            weights = base.with_weight(w).part_weights()
            fused = replace(faces, embeddings=fuse_embeddings(parts, weights))
            dirs = _criterion(fused, ids, pools[h], k)
            scores.append(float(np.mean(list(dirs.values()))))
            rows.append({"w": w, "part_weights": list(weights), "dir": dirs})
        chosen = base.with_weight(float(grid[int(np.argmax(scores))]))
        fused = replace(faces, embeddings=fuse_embeddings(parts, chosen.part_weights()))
        directions.append(
            {
                "calibration_half": h,
                "evaluation_half": 1 - h,
                "normalisation": {
                    name: {"impostor_mean": n.impostor_mean, "impostor_std": n.impostor_std}
                    for name, n in zip(spec.parts, norm, strict=True)
                },
                "grid": rows,
                "weight": chosen.weight,
                "part_weights": list(chosen.part_weights()),
                "report": _report(fused, ids, pools[h], pools[1 - h], k),
            }
        )
    return {
        "model": card.name,
        "parts": list(spec.parts),
        "criterion": "mean of DIR at FPIR "
        + " and ".join(f"{f:g}" for f in CRITERION_FPIRS)
        + f", G = {CRITERION_GALLERY}, centroid scoring, up to {ENROLMENT} enrolment images, "
        "thresholds from the calibration half's own strangers",
        "directions": directions,
        "pooled": _pool(directions),
        "card": {
            "weight": directions[0]["weight"],
            "score_normalisation": directions[0]["normalisation"],
            "source": "calibration half 0 of `facerec bench lfw-openset` (seed "
            f"{seed}); reported on half 1",
        },
        "protocol": "per direction: normalisation and weight from the calibration half only; "
        "thresholds from its strangers; DIR and FPIR measured on the evaluation half",
    }


def _pool(directions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Both directions' held-out figures pooled (DIR by mated, FPIR by non-mated searches)."""
    out: dict[str, Any] = {}
    for g in directions[0]["report"]:
        parts = [d["report"][g] for d in directions]
        wm = np.array([p["mated_searches"] for p in parts], np.float64)
        wn = np.array([p["nonmated_searches"] for p in parts], np.float64)
        out[g] = {
            f: {
                "dir": float(np.dot(wm, [p["calibrated"][f]["dir"] for p in parts]) / wm.sum()),
                "measured_fpir": float(
                    np.dot(wn, [p["calibrated"][f]["measured_fpir"] for p in parts]) / wn.sum()
                ),
                "oracle_dir": float(np.dot(wm, [p["dir_at_fpir"][f] for p in parts]) / wm.sum()),
            }
            for f in parts[0]["calibrated"]
        }
    return out
