"""Accuracy on a user's own folder of faces (``facerec bench dataset DIR``): the files,
the faces the enrolment loop accepts, and the 1:1 and open-set 1:N measures over them.

The metrics are the LFW benchmarks' (:mod:`facerec.evaluation.metrics` for ROC, EER and
TAR@FAR; :mod:`facerec.evaluation.openset` for rank-1, DIR and FPIR); only the protocol is
this folder's:

- **Faces.** Every file in a person's sub-folder is analysed; its primary face (the
  largest, most central) is enrolled through :func:`facerec.enrolment.enrol_photos`, the
  loop the gateway and ``identify --gallery`` use, so a photo the service would refuse
  (a quality gate, or a face that disagrees with the person's other photos) is counted
  as a failure and not measured.
- **1:1.** Every pair of one person's faces (genuine) up to ``max_pairs``, and as many
  pairs of different people's faces (impostor), all of them when there are no more,
  else a seeded sample.
- **1:N.** A seeded fraction of the people (:data:`HELDOUT_FRACTION`) is held out of the
  gallery: their faces are the strangers (non-mated searches). Everyone else is enrolled
  with their first K faces; their other faces are mated searches. The gallery is the one
  a deployment would have, so FPIR and DIR are counted on it, not averaged over subsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerec.enrolment import Enrolled
from facerec.errors import InvalidArgumentError
from facerec.evaluation.metrics import (
    Roc,
    equal_error_rate,
    kfold_accuracy,
    roc_curve,
    threshold_at_far,
)
from facerec.evaluation.openset import Mated, NonMated, det_curve
from facerec.matching import Gallery, Scoring, verified
from facerec.openset import OperatingPoint

HELDOUT_FRACTION = 0.2
"""The share of identities kept out of the gallery as strangers (at least one)."""
TAR_FARS = (1e-2, 1e-3, 1e-4)
DIR_FPIRS = (1e-1, 1e-2, 1e-3)
FOLDS = 10


def rate_key(rate: float) -> str:
    """``1e-3`` for 0.001: the key of a rate in the report."""
    mantissa, exponent = f"{rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class DatasetFiles:
    """(person, file) for every file in a person's sub-folder, and the files found
    outside any (not measured)."""

    root: Path
    items: list[tuple[str, Path]]
    ignored: list[Path]

    @property
    def identities(self) -> list[str]:
        return sorted({name for name, _ in self.items})


def dataset_files(root: Path) -> DatasetFiles:
    """The files of a folder-per-identity dataset (hidden files and folders skipped);
    :class:`InvalidArgumentError` when there is no dataset to measure."""
    if not root.is_dir():
        raise InvalidArgumentError(f"dataset {root} is not a directory", code="not_found")
    items: list[tuple[str, Path]] = []
    ignored: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(entry)
            continue
        items += [
            (entry.name, f)
            for f in sorted(entry.iterdir())
            if f.is_file() and not f.name.startswith(".")
        ]
    if not items:
        raise InvalidArgumentError(
            f"dataset {root} holds no files in sub-folders; expected one sub-folder of "
            "photos per person",
            code="empty_dataset",
        )
    people = {name for name, _ in items}
    if len(people) < 2:
        raise InvalidArgumentError(
            f"dataset {root} holds one person ({next(iter(people))}); measuring needs at "
            "least two, one sub-folder of photos each",
            code="too_few_identities",
        )
    return DatasetFiles(root, items, ignored)


@dataclass(frozen=True)
class DatasetFaces:
    """The faces measured: ``embeddings`` float32[N, D] grouped by person in file order,
    ``identity`` int[N] the row's person in ``names``, ``paths`` each row's file."""

    names: list[str]
    identity: np.ndarray
    embeddings: np.ndarray
    paths: list[Path]

    @classmethod
    def of(cls, enrolled: Enrolled, embedding_size: int) -> DatasetFaces:
        names = sorted(n for n, found in enrolled.accepted.items() if found)
        rows = [(k, p, f.embedding) for k, n in enumerate(names) for p, f in enrolled.accepted[n]]
        x = np.stack([e for _, _, e in rows if e is not None]).astype(np.float32)
        if x.shape != (len(rows), embedding_size):
            raise AssertionError("every accepted face has an embedding")
        return cls(names, np.array([k for k, _, _ in rows], np.intp), x, [p for _, p, _ in rows])

    def rows(self, person: int) -> np.ndarray:
        return np.flatnonzero(self.identity == person)


# -- 1:1 -------------------------------------------------------------------------------
def _genuine(identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = [], []
    for person in np.unique(identity):
        rows = np.flatnonzero(identity == person)
        i, j = np.triu_indices(len(rows), 1)
        a.append(rows[i])
        b.append(rows[j])
    return np.concatenate(a), np.concatenate(b)


def _impostor(
    identity: np.ndarray, wanted: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """(a, b, how many impostor pairs exist): all of them when they are at most
    ``wanted``, else ``wanted`` distinct ones drawn uniformly."""
    n = len(identity)
    counts = np.bincount(identity)
    total = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    if total <= wanted:
        i, j = np.triu_indices(n, 1)
        keep = identity[i] != identity[j]
        return i[keep], j[keep], total
    chosen: set[int] = set()
    while len(chosen) < wanted:
        i = rng.integers(0, n, 2 * (wanted - len(chosen)) + 16)
        j = rng.integers(0, n, len(i))
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        ok = identity[lo] != identity[hi]
        for code in (lo[ok] * n + hi[ok]).tolist():
            if len(chosen) == wanted:
                break
            chosen.add(code)
    codes = np.array(sorted(chosen), np.int64)
    return codes // n, codes % n, total


@dataclass(frozen=True)
class Pairs:
    """The 1:1 pairs measured: ``scores`` float64[P] cosines, ``same`` bool[P]."""

    scores: np.ndarray
    same: np.ndarray
    genuine_total: int
    impostor_total: int


def sample_pairs(faces: DatasetFaces, max_pairs: int, seed: int) -> Pairs:
    """Genuine pairs (all, up to ``max_pairs``: beyond, a seeded sample) and as many
    impostor pairs (all of them when there are no more)."""
    rng = np.random.default_rng(seed)
    ga, gb = _genuine(faces.identity)
    genuine_total = len(ga)
    if genuine_total > max_pairs:
        pick = np.sort(rng.choice(genuine_total, max_pairs, replace=False))
        ga, gb = ga[pick], gb[pick]
    ia, ib, impostor_total = _impostor(faces.identity, max_pairs, rng)
    a, b = np.r_[ga, ia], np.r_[gb, ib]
    x = faces.embeddings
    scores = (x[a] * x[b]).sum(axis=1).astype(np.float64)
    same = np.r_[np.ones(len(ga), bool), np.zeros(len(ia), bool)]
    return Pairs(scores, same, genuine_total, impostor_total)


def balanced(pairs: Pairs, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, same) of as many genuine as impostor pairs (a seeded sample of the more
    numerous kind): accuracy as LFW counts it, not merely a count of the commoner kind."""
    rng = np.random.default_rng(seed + 1)
    m = min(int(pairs.same.sum()), int((~pairs.same).sum()))
    g = rng.choice(np.flatnonzero(pairs.same), m, replace=False)
    i = rng.choice(np.flatnonzero(~pairs.same), m, replace=False)
    rows = np.r_[g, i]
    return pairs.scores[rows], pairs.same[rows]


def verification(pairs: Pairs, threshold: float, seed: int) -> tuple[dict[str, Any], Roc]:
    """The 1:1 section of the report, and the ROC it was read from."""
    genuine, impostor = int(pairs.same.sum()), int((~pairs.same).sum())
    if genuine == 0:
        raise InvalidArgumentError(
            "no person has two usable photos, so there is no genuine pair to measure",
            code="no_genuine_pairs",
        )
    roc = roc_curve(pairs.scores, pairs.same)
    eer, eer_threshold = equal_error_rate(roc)
    tar: dict[str, Any] = {}
    for far in TAR_FARS:
        needed = math.ceil(1 / far)
        if impostor < needed:
            tar[rate_key(far)] = {
                "tar": None,
                "reason": f"needs at least {needed:,} impostor pairs, the dataset gives "
                f"{impostor:,}",
            }
            continue
        t, value = threshold_at_far(pairs.scores, pairs.same, far)
        tar[rate_key(far)] = {
            "tar": value,
            "threshold": t,
            "false_accepts_allowed": math.floor(far * impostor),
        }
    s, y = balanced(pairs, seed)
    m = len(s) // 2
    accepted = np.array([verified(v, threshold) for v in s], bool)
    k = max(2, min(FOLDS, m))
    folds = np.random.default_rng(seed + 2).permutation(np.arange(2 * m) % k)
    accs, _ = kfold_accuracy(s, y, folds)
    doc = {
        "genuine_pairs": genuine,
        "impostor_pairs": impostor,
        "genuine_pairs_in_dataset": pairs.genuine_total,
        "impostor_pairs_in_dataset": pairs.impostor_total,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "auc": roc.auc,
        "tar_at_far": tar,
        "threshold": threshold,
        "accuracy_at_threshold": float(np.mean(accepted == y)),
        "tar_at_threshold": float(np.mean(pairs.scores[pairs.same] >= threshold)),
        "far_at_threshold": float(np.mean(pairs.scores[~pairs.same] >= threshold)),
        "best_accuracy": float(accs.mean()),
        "best_accuracy_std": float(accs.std()),
        "accuracy_pairs": 2 * m,
        "accuracy_folds": k,
    }
    return doc, roc


# -- 1:N -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Who is enrolled with which faces, and which faces search."""

    gallery: Gallery
    heldout: list[str]
    mated_rows: np.ndarray
    mated_subject: np.ndarray  # column of the probe's subject in ``gallery.subjects``
    nonmated_rows: np.ndarray


def split(faces: DatasetFaces, k: int, scoring: Scoring, seed: int) -> Split:
    """Hold :data:`HELDOUT_FRACTION` of the people out (seeded, at least one, never all);
    enrol the others with their first ``k`` faces; their remaining faces search."""
    people = len(faces.names)
    held = min(max(1, round(HELDOUT_FRACTION * people)), people - 1)
    out = set(np.random.default_rng(seed).permutation(people)[:held].tolist())
    gallery = Gallery(faces.embeddings.shape[1], scoring)
    mated: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    for person in range(people):
        rows = faces.rows(person)
        if person in out:
            continue
        gallery.add(faces.names[person], faces.embeddings[rows[:k]])
        mated.append(rows[k:])
        owner.append(np.full(len(rows[k:]), len(gallery) - 1))
    nonmated = np.flatnonzero(np.isin(faces.identity, sorted(out)))
    return Split(
        gallery,
        sorted(faces.names[p] for p in out),
        np.concatenate(mated).astype(np.intp),
        np.concatenate(owner).astype(np.intp),
        nonmated,
    )


@dataclass(frozen=True)
class Searches:
    """The split's searches against its gallery; ``nonmated_best`` int[P] the subject
    (column) each stranger scores highest with."""

    mated: Mated | None
    nonmated: NonMated
    nonmated_best: np.ndarray
    gallery_size: int


def search(faces: DatasetFaces, s: Split) -> Searches:
    x = faces.embeddings
    size = len(s.gallery)
    scores = s.gallery.scores(x[s.nonmated_rows])
    nonmated = NonMated(scores, np.full(len(scores), -1))
    mated = None
    if len(s.mated_rows):
        mated = Mated.from_scores(s.gallery.scores(x[s.mated_rows]), s.mated_subject)
    return Searches(mated, nonmated, scores.argmax(axis=1), size)


def false_alarms(
    faces: DatasetFaces, s: Split, found: Searches, threshold: float, most: int = 20
) -> list[dict[str, Any]]:
    """The strangers matched at ``threshold``, most similar first (at most ``most``):
    where a labelling slip (one person under two names) or a look-alike shows."""
    top = found.nonmated.top
    hits = np.flatnonzero(top >= threshold)
    hits = hits[np.argsort(-top[hits], kind="stable")][:most]
    names = s.gallery.subjects
    return [
        {
            "probe": str(faces.paths[s.nonmated_rows[h]]),
            "matched": names[int(found.nonmated_best[h])],
            "similarity": round(float(top[h]), 4),
        }
        for h in hits
    ]


def identification(
    faces: DatasetFaces, searches: Searches, s: Split, point: OperatingPoint | None, k: int
) -> dict[str, Any]:
    """The open-set section of the report; ``point`` the operating point ``facerec
    identify`` would take for this gallery (None when the card has no thresholds)."""
    nm, m, size = searches.nonmated, searches.mated, searches.gallery_size
    doc: dict[str, Any] = {
        "split": {
            "gallery_identities": size,
            "gallery_images_per_identity": k,
            "heldout_fraction": HELDOUT_FRACTION,
            "heldout_identities": len(s.heldout),
            "mated_probes": len(s.mated_rows),
            "nonmated_probes": len(s.nonmated_rows),
            "rule": f"each enrolled person's first {k} usable photos (file order) form the "
            "gallery, the others are mated probes; every photo of a held-out person is a "
            "non-mated probe",
        },
        "scoring": s.gallery.scoring.method,
    }
    if m is None:
        doc["rank1"] = doc["rank5"] = None
        doc["notes"] = [f"no enrolled person has more than {k} usable photos: no mated probe"]
    else:
        doc["rank1"] = m.rank1(size)
        doc["rank5"] = float(np.mean(m.above < 5))
    dirs: dict[str, Any] = {}
    for fpir in DIR_FPIRS:
        needed = math.ceil(1 / fpir)
        if len(nm) < needed or m is None:
            dirs[rate_key(fpir)] = {
                "dir": None,
                "reason": f"needs at least {needed:,} non-mated probes, the dataset gives "
                f"{len(nm):,}"
                if m is not None
                else "no mated probe",
            }
            continue
        t = nm.threshold(fpir, size)
        dirs[rate_key(fpir)] = {
            "dir": m.dir(t, size),
            "threshold": t,
            "false_alarms_allowed": math.floor(fpir * len(nm)),
        }
    doc["dir_at_fpir"] = dirs
    if point is None:
        doc["operating_point"] = None
    else:
        doc["operating_point"] = {
            **point.to_dict(),
            "configured_fpir": point.fpir,
            "measured_fpir": nm.fpir(point.threshold, size),
            "false_alarms": int((nm.top >= point.threshold).sum()),
            "dir": None if m is None else m.dir(point.threshold, size),
            "matched_strangers": false_alarms(faces, s, searches, point.threshold),
        }
    return doc


def det_points(searches: Searches, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) over ``thresholds`` for the DET plot (empty without mated probes)."""
    if searches.mated is None:
        return np.zeros(0), np.zeros(0)
    return det_curve(
        searches.nonmated, searches.mated, searches.gallery_size, np.asarray(thresholds)
    )
