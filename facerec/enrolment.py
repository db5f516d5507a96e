"""Enrolling a set of photos of one person: the one loop the command line's folder
galleries, the gateway's ``POST /v1/subjects/{id}/faces`` and every other enrolment run.

The photos are taken most typical first (:func:`facerec.selection.consensus_order`), and
each must pass its checks against the templates accepted before it (those the person
already had, then this set's): one photo of someone else among several meets the
majority's templates and is the one refused, whatever the order it came in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from facerec.errors import FaceRecError
from facerec.selection import consensus_order

R = TypeVar("R")


def enrol_in_order(
    embeddings: Sequence[np.ndarray],
    accept: Callable[[int, np.ndarray | None], R],
    existing: Sequence[np.ndarray] = (),
) -> list[R | FaceRecError]:
    """Each photo's outcome, in the order given: ``accept(i, templates)`` (the checks
    against ``templates``, float32[N, D] of the faces accepted so far, None when there
    are none; whatever storing the photo means) or the :class:`FaceRecError` it raised.
    A refused photo adds no template; ``existing`` are the person's templates before."""
    accepted = list(existing)
    results: list[R | FaceRecError | None] = [None] * len(embeddings)
    order = consensus_order(np.stack(embeddings)) if len(embeddings) else []
    for i in order:
        templates = np.stack(accepted) if accepted else None
        try:
            results[i] = accept(i, templates)
        except FaceRecError as exc:
            results[i] = exc
            continue
        accepted.append(embeddings[i])
    return [r for r in results if r is not None]


__all__ = ["enrol_in_order"]
