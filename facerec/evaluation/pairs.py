"""LFW View 2 pairs and the identities of its folds (standard library only).

This module is imported by the GPU training script, which runs where only torch, numpy,
OpenCV, matplotlib and tqdm are installed: keep it free of other dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from facerec.errors import InvalidArgumentError


@dataclass(frozen=True)
class Pair:
    a: str  # image key, e.g. "Aaron_Peirsol_0001"
    b: str
    same: bool
    fold: int


def identity_of(key: str) -> str:
    """The person of an LFW image key or file stem: ``George_W_Bush_0012`` -> ``George_W_Bush``."""
    person, sep, number = key.rpartition("_")
    if not sep or not person or not number.isdigit():
        raise InvalidArgumentError(
            f"{key!r} is not an LFW-style name (Person_Name_0001)", code="invalid_name"
        )
    return person


def read_pairs(path: Path) -> list[Pair]:
    """Parse a View 2 ``pairs.txt``: a header ``folds<TAB>n``, then per fold n same-person
    lines ``name i j`` and n different-person lines ``name1 i name2 j``."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise InvalidArgumentError(f"{path} does not start with a '<folds> <pairs>' header")
    folds, per_fold = int(lines[0][0]), int(lines[0][1])
    if folds < 2 or per_fold < 1:
        raise InvalidArgumentError(
            f"{path}: needs at least 2 folds of at least 1 pair each (thresholds are chosen "
            f"on the other folds), header says {folds} x {per_fold}"
        )
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise InvalidArgumentError(
            f"{path}: expected {folds * 2 * per_fold} pair lines, found {len(body)}"
        )
    pairs = []
    for n, f in enumerate(body):
        fold = n // (2 * per_fold)
        if len(f) == 3:
            pairs.append(Pair(f"{f[0]}_{int(f[1]):04d}", f"{f[0]}_{int(f[2]):04d}", True, fold))
        elif len(f) == 4:
            pairs.append(Pair(f"{f[0]}_{int(f[1]):04d}", f"{f[2]}_{int(f[3]):04d}", False, fold))
        else:
            raise InvalidArgumentError(f"{path}: malformed line {n + 2}: {' '.join(f)}")
    return pairs


def identity_folds(pairs: Sequence[Pair]) -> dict[str, int]:
    """The fold of every person named in ``pairs``.

    View 2's folds share no identities; a person in two folds raises
    :class:`InvalidArgumentError` (code ``folds_share_identities``), since the protocol's
    claim that a test fold is unseen would then be false.
    """
    folds: dict[str, int] = {}
    for p in pairs:
        for key in (p.a, p.b):
            person = identity_of(key)
            seen = folds.setdefault(person, p.fold)
            if seen != p.fold:
                raise InvalidArgumentError(
                    f"{person} appears in folds {seen} and {p.fold}: the folds share identities",
                    code="folds_share_identities",
                )
    return folds


def unseen_folds(pairs: Sequence[Pair], trained_identities: Iterable[str]) -> list[int]:
    """Folds none of whose people is in ``trained_identities``, ascending."""
    trained = set(trained_identities)
    seen = {fold for person, fold in identity_folds(pairs).items() if person in trained}
    return sorted({p.fold for p in pairs} - seen)


def validation_fold(test_fold: int, folds: int = 10) -> int:
    """The fold held out for early stopping and thresholds when ``test_fold`` is tested:
    the next one, cyclically."""
    return (test_fold + 1) % folds
