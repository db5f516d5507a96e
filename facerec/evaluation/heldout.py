"""LFW for a fine-tuned model: only the folds it never trained on are scored.

A model exported from a checkpoint records in its card the LFW folds none of whose people
it trained on (``calibration_data.lfw_folds``) and, when it came from the ten-fold
protocol, its test fold and its validation fold (the one that chose its epoch). The
benchmark scores those folds' pairs only, each fold at the threshold chosen on the other
unseen folds; the test fold's figure is the one to report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from facerec.errors import InvalidArgumentError
from facerec.models import BASE_MODEL, ModelCard, load_model_card


def heldout_folds(card: ModelCard, pairs_file: Path) -> list[int] | None:
    """The folds to score for ``card``'s model (None: all, for a model not trained on
    LFW's people). The pairs file must be the one the folds were computed from."""
    data = card.raw.get("calibration_data")
    if not data:
        return None
    recorded = data.get("pairs_sha256")
    if recorded and hashlib.sha256(pairs_file.read_bytes()).hexdigest() != recorded:
        raise InvalidArgumentError(
            f"{pairs_file} is not the pairs file model {card.name}'s unseen folds were "
            "computed from",
            code="pairs_mismatch",
        )
    folds = [int(f) for f in data["lfw_folds"]]
    return None if len(folds) == 10 else folds


def heldout_summary(card: ModelCard, result: dict[str, Any]) -> dict[str, Any]:
    """The test fold's accuracy (threshold from the other unseen folds) and the published
    model's card figure for the same pipeline variant, beside it."""
    training = card.raw.get("training", {})
    folds = result["folds"]
    by_fold = dict(zip(folds, result["fold_accuracies"], strict=True))
    test = training.get("lfw_test_fold")
    settings = result["settings"]
    base = load_model_card(BASE_MODEL).calibration(
        settings["alignment"], settings["flip"], settings["precision"]
    )
    return {
        "folds_scored": folds,
        "fold_accuracies": by_fold,
        "test_fold": test,
        "test_accuracy": by_fold.get(test) if test is not None else None,
        "validation_fold": training.get("lfw_validation_fold"),
        "rule": "each fold at the accuracy-optimal threshold of the other unseen folds' pairs; "
        "the validation fold chose the training epoch, the test fold did not",
        "published_model": {
            "name": BASE_MODEL,
            "lfw_accuracy_all_folds": base.lfw_accuracy,
            "variant": [base.alignment, base.flip, base.precision],
        },
    }


def describe_heldout(result: dict[str, Any], out: Path) -> str:
    h = result["heldout"]
    folds = ", ".join(f"fold {k} {100 * v:.2f} %" for k, v in h["fold_accuracies"].items())
    published = 100 * h["published_model"]["lfw_accuracy_all_folds"]
    head = (
        f"test fold {h['test_fold']}: {100 * h['test_accuracy']:.2f} %"
        if h["test_accuracy"] is not None
        else f"unseen folds: {100 * result['accuracy_mean']:.2f} %"
    )
    return (
        f"LFW on the folds model {result['settings']['model']} never trained on: {head} "
        f"({folds}; {result['pairs']} pairs, threshold from the other unseen fold(s)); "
        f"published model, all ten folds: {published:.2f} %\n"
        f"results: {out / 'lfw.json'}"
    )
