"""The LFW open-set identification protocol (in the manner of NIST FRVT 1:N and
Best-Rowden et al., "Unconstrained face recognition", 2014).

- **Identities** are the LFW names, except the people LFW lists under two names (name
  order, spelling or a full name: :data:`SAME_PERSON`), merged so that no search of a person counts
  as a stranger's.
- **Two halves.** Identities are split in two halves of equal size and mix (sorted by
  number of images, then alternately assigned in a seeded random order). Thresholds
  are calibrated on one half's non-mated searches and evaluated on the other half; then
  the halves swap, and the figures are pooled over both evaluations. Calibration and
  evaluation never share an identity.
- **Enrolment.** With E enrolment images (1, or up to 3), a person with n >= 2 images is
  enrolled with the first min(E, n - 1) of them (file order) and searched with the rest
  (mated probes); a person with one image is enrolled with it and never searched as
  mated: such people are the gallery's distractors.
- **Galleries** of G subjects are random G-subsets of the evaluation half (G = 100,
  1,000, and all its identities); metrics are exact expectations over all such subsets
  (:mod:`facerec.evaluation.openset`). Non-mated probes are every image of a person not in
  the gallery.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from facerec.errors import FaceRecError
from facerec.evaluation.lfw_faces import LfwFaces
from facerec.evaluation.openset import Mated, NonMated, calibrate, subject_scores
from facerec.matching import Scoring, centroid
from facerec.openset import ThresholdTable
from facerec.selection import (
    EnrolmentGates,
    FaceQuality,
    assess,
    check_consistency,
    check_quality,
)

# People LFW files under two names (name order, transliteration, full name): one identity.
SAME_PERSON = {
    "Hassan_Wirajuda": "Hasan_Wirayuda",
    "Dai_Chul_Chyung": "Chyung_Dai-chul",
    "Prince_Felipe": "Felipe_De_Borbon",
    "Sepp_Blatter": "Joseph_Blatter",
    "Wang_Nan": "Nan_Wang",
    # the top different-person pair of issue 21's fused model: one person, two names
    "Mireya_Elisa_Moscoso_Rodriguez": "Mireya_Moscoso",
}
# Gallery sizes and FPIRs of the calibration tables (the model card's grid).
TABLE_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4000)
TABLE_FPIRS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)


@dataclass
class Identities:
    """``names[i]`` and its image rows ``images[i]`` int[n_i] (file order)."""

    names: list[str]
    images: list[np.ndarray]

    @classmethod
    def of(cls, faces: LfwFaces, merge: bool = True) -> Identities:
        groups: dict[str, list[int]] = defaultdict(list)
        for row, name in enumerate(faces.identities):
            groups[SAME_PERSON.get(name, name) if merge else name].append(row)
        names = sorted(groups)
        return cls(names, [np.asarray(groups[n], np.intp) for n in names])

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> np.ndarray:
        return np.array([len(g) for g in self.images])


def split_halves(identities: Identities, seed: int = 0) -> np.ndarray:
    """int[I]: 0 or 1 per identity; the halves differ by at most one identity and have
    the same mix of image counts."""
    rng = np.random.default_rng(seed)
    ties = rng.random(len(identities))
    order = np.lexsort((ties, identities.counts()))
    half = np.zeros(len(identities), np.intp)
    half[order[1::2]] = 1
    return half


@dataclass
class Enrolment:
    """Per subject its template rows; the mated probe rows and their subject (column)."""

    templates: list[np.ndarray]
    probes: np.ndarray
    probe_subject: np.ndarray
    gated_fallbacks: int = 0  # subjects with no image passing the gates (enrolled anyway)


def enrol(
    identities: Identities,
    pool: np.ndarray,
    count: int,
    faces: LfwFaces | None = None,
    gates: EnrolmentGates | None = None,
) -> Enrolment:
    """Templates for the identities ``pool`` int[S] (subject s = ``pool[s]``).

    Without ``gates``: the first min(count, n - 1) images (all of a one-image person's).
    With ``gates`` (and ``faces``): the first images that pass them, in file order, each
    checked for consistency with those already chosen; a person none of whose images
    passes is enrolled with the first (counted in ``gated_fallbacks``).
    """
    templates: list[np.ndarray] = []
    probes: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    fallbacks = 0
    for s, ident in enumerate(pool):
        rows = identities.images[ident]
        want = min(count, len(rows) - 1) if len(rows) >= 2 else 1
        if gates is None or faces is None:
            chosen = list(rows[:want])
        else:
            chosen = _gated(rows, want, faces, gates)
            if not chosen:
                chosen, fallbacks = [rows[0]], fallbacks + 1
        templates.append(np.asarray(chosen, np.intp))
        if len(rows) >= 2:
            rest = np.setdiff1d(rows, chosen)
            probes.append(rest)
            owners.append(np.full(len(rest), s))
    return Enrolment(
        templates,
        np.concatenate(probes) if probes else np.zeros(0, np.intp),
        np.concatenate(owners) if owners else np.zeros(0, np.intp),
        fallbacks,
    )


@dataclass(frozen=True)
class _Face:
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray | None


def image_quality(faces: LfwFaces, row: int, gates: EnrolmentGates) -> FaceQuality:
    """The gates' measures of one LFW image (sharpness from the cache; no consistency)."""
    face = _Face(faces.boxes[row], float(faces.scores[row]), faces.landmarks[row], None)
    size = (int(faces.image_size[row, 0]), int(faces.image_size[row, 1]))
    quality = assess(face, size, frontal_nose_height=gates.frontal_nose_height)
    return replace(quality, sharpness=float(faces.sharpness[row]))


def refusals(faces: LfwFaces, gates: EnrolmentGates) -> dict[str, int]:
    """How many LFW images each quality gate refuses (the first failing gate counts)."""
    out: dict[str, int] = defaultdict(int)
    for row in range(len(faces)):
        if not faces.found[row]:
            out["no_face"] += 1
            continue
        try:
            check_quality(image_quality(faces, row, gates), gates)
        except FaceRecError as exc:
            out[exc.code] += 1
    return dict(out)


def consistency_rates(
    faces: LfwFaces, identities: Identities, gates: EnrolmentGates, seed: int = 0
) -> dict[str, Any]:
    """The consistency gate on LFW: how often it refuses a person's own photo (against the
    centroid of up to 3 of their other photos) and accepts another person's (against a
    random other person's centroid)."""
    limit = gates.min_consistency
    rng = np.random.default_rng(seed)
    people = [g for g in identities.images if len(g) >= 2]
    own, other = [], []
    x = faces.embeddings
    for k, rows in enumerate(people):
        for i in rows:
            own.append(float(centroid(x[[r for r in rows if r != i][:3]]) @ x[i]))
        stranger = people[(k + 1 + int(rng.integers(len(people) - 1))) % len(people)]
        other.append(float(centroid(x[stranger[:3]]) @ x[rows[0]]))
    a, b = np.asarray(own), np.asarray(other)
    return {
        "min_consistency": limit,
        "own_photos": len(a),
        "own_refused": float((a < limit).mean()) if limit is not None else 0.0,
        "other_person_photos": len(b),
        "other_person_accepted": float((b >= limit).mean()) if limit is not None else 1.0,
    }


def _gated(rows: np.ndarray, want: int, faces: LfwFaces, gates: EnrolmentGates) -> list[int]:
    chosen: list[int] = []
    for row in rows:
        if len(chosen) == want:
            break
        if not faces.found[row]:
            continue
        quality = image_quality(faces, int(row), gates)
        if chosen:
            c = float(centroid(faces.embeddings[chosen]) @ faces.embeddings[row])
            quality = replace(quality, consistency=c)
        try:
            check_quality(quality, gates)
            check_consistency(quality, gates)
        except FaceRecError:
            continue
        chosen.append(int(row))
    return chosen


@dataclass
class Searches:
    """One pool's searches under one enrolment and scoring."""

    nonmated: NonMated
    mated: Mated
    subjects: int
    enrolment: Enrolment


def searches(
    faces: LfwFaces,
    identities: Identities,
    pool: np.ndarray,
    count: int,
    scoring: Scoring,
    gates: EnrolmentGates | None = None,
    mated: bool = True,
) -> Searches:
    """Non-mated searches (every image of the pool, its own subject excluded) and mated
    searches (the probes of :func:`enrol`) against the pool's subjects."""
    en = enrol(identities, pool, count, faces, gates)
    rows = np.concatenate([identities.images[i] for i in pool])
    own = np.concatenate([np.full(len(identities.images[i]), s) for s, i in enumerate(pool)])
    x = faces.embeddings
    # evaluation searches keep more of the distribution, for the DET curve's high FPIRs
    most = max(TABLE_FPIRS) if not mated else 0.25
    nonmated = NonMated(subject_scores(x, rows, en.templates, scoring), own, most)
    if mated and len(en.probes):
        m = Mated.from_scores(subject_scores(x, en.probes, en.templates, scoring), en.probe_subject)
    else:
        m = Mated(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Searches(nonmated, m, len(pool), en)


def table_for(
    nonmated: NonMated,
    method: str,
    sizes: Sequence[int] = TABLE_SIZES,
    fpirs: Sequence[float] = TABLE_FPIRS,
    templates: str = "",
    source: str = "",
) -> ThresholdTable:
    """A :class:`ThresholdTable` measured on ``nonmated`` at ``sizes`` (those the pool can
    hold; the largest is always the whole pool) and ``fpirs``."""
    most = int(nonmated.others.min())
    usable = sorted({g for g in sizes if g < most} | {most})
    rows = calibrate(nonmated, usable, fpirs)
    return ThresholdTable(
        method,
        tuple(usable),
        tuple(fpirs),
        tuple(tuple(r) for r in rows),
        templates,
        source,
    )


@dataclass
class FoldResult:
    """One evaluation half at one gallery size."""

    gallery: int
    mated: int
    nonmated: int
    rank1: float
    oracle: dict[float, tuple[float, float]] = field(default_factory=dict)  # f -> (t, DIR)
    calibrated: dict[float, tuple[float, float, float]] = field(default_factory=dict)
    # f -> (threshold from the other half, measured FPIR, DIR)


def evaluate_fold(
    evaluation: Searches, table: ThresholdTable, gallery: int, fpirs: Sequence[float]
) -> FoldResult:
    """Rank-1, DIR at each FPIR with the threshold set on the evaluation half's own
    strangers (``oracle``: what the score distributions allow) and with the threshold
    from the other half's table (``calibrated``: what a deployment gets)."""
    nm, m = evaluation.nonmated, evaluation.mated
    out = FoldResult(gallery, len(m), len(nm), m.rank1(gallery))
    for f in fpirs:
        t = nm.threshold(f, gallery)
        out.oracle[f] = (t, m.dir(t, gallery))
        tc, _ = table.threshold(f, gallery)
        out.calibrated[f] = (tc, nm.fpir(tc, gallery), m.dir(tc, gallery))
    return out


def pooled(folds: Sequence[FoldResult], fpirs: Sequence[float]) -> dict[str, Any]:
    """The folds' figures pooled (FPIR weighted by non-mated, DIR by mated searches)."""
    wm = np.array([f.mated for f in folds], np.float64)
    wn = np.array([f.nonmated for f in folds], np.float64)

    def by_mated(v: Sequence[float]) -> float:
        return float(np.dot(wm, v) / wm.sum()) if wm.sum() else 0.0

    def by_nonmated(v: Sequence[float]) -> float:
        return float(np.dot(wn, v) / wn.sum())

    key = _fpir_key
    return {
        "gallery_size": [f.gallery for f in folds],
        "mated_searches": int(wm.sum()),
        "nonmated_searches": int(wn.sum()),
        "rank1": by_mated([f.rank1 for f in folds]),
        "dir_at_fpir": {key(p): by_mated([f.oracle[p][1] for f in folds]) for p in fpirs},
        "thresholds": {key(p): [round(f.oracle[p][0], 6) for f in folds] for p in fpirs},
        "calibrated": {
            key(p): {
                "thresholds": [round(f.calibrated[p][0], 6) for f in folds],
                "measured_fpir": by_nonmated([f.calibrated[p][1] for f in folds]),
                "measured_fpir_per_fold": [f.calibrated[p][1] for f in folds],
                "expected_false_alarms": float(sum(f.calibrated[p][1] * f.nonmated for f in folds)),
                "dir": by_mated([f.calibrated[p][2] for f in folds]),
            }
            for p in fpirs
        },
    }


def _fpir_key(f: float) -> str:
    return f"{f:g}"
