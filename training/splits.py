"""Deterministic splits by identity, never by image: LFW View 2 folds, or a hash split.

For LFW's ten-fold protocol, test fold k is never trained on, and neither is its
validation fold ``(k + 1) % 10`` (:func:`facerec.evaluation.pairs.validation_fold`): that
one chooses the early-stopping epoch and the threshold the test fold is scored with. The
model trains on the identities of the eight others (and on any identity of the data that
no fold names). The folds share no identities (checked).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facerec.evaluation.pairs import Pair, identity_folds, validation_fold
from training.data import CropSet
from training.errors import TrainingDataError


@dataclass
class Split:
    """Identities to train on, and the validation / test pairs (by crop key)."""

    train: list[str]
    validation_pairs: list[Pair]
    test_pairs: list[Pair] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    selection_pairs: list[Pair] = field(default_factory=list)


def all_pairs(
    cs: CropSet, identities: set[str], seed: int, max_same: int = 5000, different: int = 20000
) -> list[Pair]:
    """Every same-person pair among the crops of ``identities`` (at most ``max_same``) and
    ``different`` different-person pairs, drawn with ``seed``: a larger set than a fold's
    600 pairs, to break ties when choosing the epoch."""
    by_id: dict[str, list[str]] = {}
    for key, lab in zip(cs.keys, cs.labels, strict=True):
        if cs.identities[lab] in identities:
            by_id.setdefault(cs.identities[lab], []).append(key)
    same = [
        Pair(ks[i], ks[j], True, -1)
        for name in sorted(by_id)
        for ks in [by_id[name]]
        for i in range(len(ks))
        for j in range(i + 1, len(ks))
    ]
    rng = np.random.default_rng([seed, 13])
    if len(same) > max_same:
        same = [same[i] for i in sorted(rng.choice(len(same), max_same, replace=False))]
    keys = [k for name in sorted(by_id) for k in by_id[name]]
    owner = {k: name for name, ks in by_id.items() for k in ks}
    diff: list[Pair] = []
    if len(by_id) >= 2:
        while len(diff) < different:
            a, b = rng.choice(len(keys), 2, replace=False)
            if owner[keys[a]] != owner[keys[b]]:
                diff.append(Pair(keys[a], keys[b], False, -1))
    return same + diff


def _present(pairs: list[Pair], keys: set[str]) -> tuple[list[Pair], int]:
    kept = [p for p in pairs if p.a in keys and p.b in keys]
    return kept, len(pairs) - len(kept)


def lfw_split(cs: CropSet, pairs: list[Pair], test_fold: int, val_fold: int | None = None) -> Split:
    """Train on every identity outside folds ``test_fold`` and ``val_fold``."""
    folds = identity_folds(pairs)
    n_folds = max(p.fold for p in pairs) + 1
    val = validation_fold(test_fold, n_folds) if val_fold is None else val_fold
    if not (0 <= test_fold < n_folds and 0 <= val < n_folds) or val == test_fold:
        raise TrainingDataError(
            f"test fold {test_fold} and validation fold {val} must differ and lie in "
            f"0..{n_folds - 1}",
            code="invalid_split",
        )
    keys = set(cs.keys)
    val_pairs, val_missing = _present([p for p in pairs if p.fold == val], keys)
    test_pairs, test_missing = _present([p for p in pairs if p.fold == test_fold], keys)
    if not val_pairs or not test_pairs:
        raise TrainingDataError(
            f"the crops in {cs.root} hold none of fold {val}'s or {test_fold}'s pairs: are "
            "they LFW's (facerec prepare-dataset ../shared/datasets/lfw/images DST --pad 50)?",
            code="invalid_split",
        )
    held_out = {test_fold, val}
    train = [name for name in cs.identities if folds.get(name, -1) not in held_out]
    selection = all_pairs(cs, {n for n, f in folds.items() if f == val}, seed=val)
    info = {
        "protocol": "lfw-view2",
        "test_fold": test_fold,
        "validation_fold": val,
        "train_folds": sorted(set(range(n_folds)) - held_out),
        "train_identities": len(train),
        "identities_in_no_fold": sum(1 for n in train if n not in folds),
        "validation_pairs": len(val_pairs),
        "test_pairs": len(test_pairs),
        "pairs_missing_a_crop": val_missing + test_missing,
        "selection_pairs": len(selection),
    }
    return Split(train, val_pairs, test_pairs, info, selection)


def _rank(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def identity_split(
    cs: CropSet, val_fraction: float = 0.1, seed: int = 0, max_pairs: int = 3000
) -> Split:
    """Hold out about ``val_fraction`` of the identities (those whose seeded hash ranks
    first), and build validation pairs among them: same-person pairs of every held-out
    identity with 2+ crops (at most ``max_pairs``) and as many different-person pairs."""
    if not 0 < val_fraction < 1:
        raise TrainingDataError("val_fraction must lie in (0, 1)", code="invalid_split")
    counts = cs.image_counts
    ranked = sorted(cs.identities, key=lambda n: _rank(n, seed))
    n_val = max(2, round(len(ranked) * val_fraction))
    held = set(ranked[:n_val])
    train = [n for n in cs.identities if n not in held]
    by_id: dict[str, list[str]] = {}
    for key, lab in zip(cs.keys, cs.labels, strict=True):
        if cs.identities[lab] in held:
            by_id.setdefault(cs.identities[lab], []).append(key)
    rng = np.random.default_rng([seed, 11])
    same = [
        Pair(ks[i], ks[j], True, 0)
        for name in sorted(by_id)
        for ks in [by_id[name]]
        for i in range(len(ks))
        for j in range(i + 1, len(ks))
    ]
    if len(same) > max_pairs:
        same = [same[i] for i in sorted(rng.choice(len(same), max_pairs, replace=False))]
    names = sorted(by_id)
    diff: list[Pair] = []
    while len(diff) < len(same) and len(names) >= 2:
        a, b = rng.choice(len(names), 2, replace=False)
        diff.append(Pair(rng.choice(by_id[names[a]]), rng.choice(by_id[names[b]]), False, 0))
    trainable = int(sum(counts[cs.identities.index(n)] >= 2 for n in train))
    if not same or trainable < 2:
        raise TrainingDataError(
            f"{cs.root}: a validation split needs held-out identities with 2+ crops and 2+ "
            f"such identities left to train on ({len(cs.identities)} identities in all)",
            code="too_few_identities",
        )
    info = {
        "protocol": "identity-hash",
        "seed": seed,
        "validation_identities": sorted(held),
        "train_identities": len(train),
        "validation_pairs": len(same) + len(diff),
    }
    return Split(train, same + diff, [], info)
