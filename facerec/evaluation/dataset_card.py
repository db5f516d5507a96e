"""``facerec bench dataset --update-card NAME``: the operating points measured on a
user's own faces, written into a copy of the model card (:func:`write_calibrated_card`)
that ``--model NAME`` then selects.

Thresholds are only as good as the errors they were counted on. A card is written only
from a dataset of at least :data:`MIN_IDENTITIES` people, :data:`MIN_IMPOSTOR_PAIRS`
impostor pairs and :data:`MIN_SEARCHES` faces, and it holds only the rates at which the
data shows at least :data:`MIN_ERRORS` errors: a 1:1 FAR of 1e-4 needs 100,000 impostor
pairs, an FPIR of 1e-3 10,000 faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facerec.errors import InvalidArgumentError
from facerec.evaluation.dataset import DatasetFaces, Pairs, balanced, rate_key
from facerec.evaluation.metrics import best_threshold, threshold_at_far
from facerec.evaluation.openset import NonMated, subject_scores
from facerec.evaluation.openset_lfw import TABLE_FPIRS, table_for
from facerec.matching import SCORE_METHODS, Scoring
from facerec.models import write_calibrated_card
from facerec.pipeline import FacePipeline

MIN_IDENTITIES = 20
MIN_IMPOSTOR_PAIRS = 10_000
MIN_SEARCHES = 1_000
MIN_ERRORS = 10
CARD_FARS = (1e-3, 1e-4)


def check_support(faces: DatasetFaces, pairs: Pairs) -> None:
    """:class:`InvalidArgumentError` (code ``too_little_data``) unless the dataset is large
    enough to calibrate a card."""
    impostors = int((~pairs.same).sum())
    short = [
        f"{have:,} {what} (at least {need:,})"
        for what, have, need in (
            ("people", len(faces.names), MIN_IDENTITIES),
            ("impostor pairs", impostors, MIN_IMPOSTOR_PAIRS),
            ("faces", len(faces.paths), MIN_SEARCHES),
        )
        if have < need
    ]
    if short:
        raise InvalidArgumentError(
            "too little data to calibrate a model card: " + ", ".join(short),
            code="too_little_data",
        )


def card_entry(
    pipeline: FacePipeline, faces: DatasetFaces, pairs: Pairs, k: int, seed: int, source: str
) -> dict[str, Any]:
    """The calibration entry for the pipeline's variant, measured on ``faces``."""
    check_support(faces, pairs)
    cfg = pipeline.config
    impostors = int((~pairs.same).sum())
    threshold, accuracy = best_threshold(*balanced(pairs, seed))
    far = {
        rate_key(f): round(threshold_at_far(pairs.scores, pairs.same, f)[0], 6)
        for f in CARD_FARS
        if impostors * f >= MIN_ERRORS
    }
    fpirs = [f for f in TABLE_FPIRS if len(faces.paths) * f >= MIN_ERRORS]
    if not fpirs:
        raise InvalidArgumentError(
            f"{len(faces.paths)} faces resolve no FPIR of {list(TABLE_FPIRS)}",
            code="too_little_data",
        )
    people = range(len(faces.names))
    templates = [faces.rows(p)[:k] for p in people]
    rows = np.arange(len(faces.paths))
    tables = {}
    for method in SCORE_METHODS:
        scores = subject_scores(faces.embeddings, rows, templates, Scoring(method))
        nonmated = NonMated(scores, faces.identity, max(fpirs))
        tables[method] = table_for(
            nonmated,
            method,
            fpirs=fpirs,
            templates=f"up to {k} images per subject",
            source=f"non-mated searches of {len(rows):,} faces of {source} against the other "
            f"{len(faces.names) - 1} people, expected over random galleries",
        ).to_dict()
    return {
        "alignment": cfg.alignment,
        "flip": cfg.flip,
        "precision": cfg.precision,
        "threshold": round(threshold, 6),
        "lfw_accuracy": pipeline.calibration.lfw_accuracy,
        "dataset_accuracy": round(accuracy, 6),
        "verification_far": {
            "thresholds": far,
            "source": f"{impostors:,} impostor pairs of {source}",
        },
        "identification": tables,
    }


def update_card(
    pipeline: FacePipeline,
    name: str,
    faces: DatasetFaces,
    pairs: Pairs,
    k: int,
    seed: int,
    source: str,
) -> Path:
    """Write the calibrated copy of the pipeline's model card as model ``name``."""
    entry = card_entry(pipeline, faces, pairs, k, seed, source)
    return write_calibrated_card(pipeline.card, name, entry, source)
