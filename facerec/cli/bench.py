"""``facerec bench``: accuracy benchmarks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from facerec.cli.output import emit
from facerec.evaluation.heldout import describe_heldout, heldout_folds, heldout_summary
from facerec.evaluation.lfw import run_lfw
from facerec.models import update_calibration
from facerec.pipeline import FacePipeline


def store_in_card(pipeline: FacePipeline, **values: Any) -> None:
    """Merge ``values`` into the model card's entry for this pipeline's variant."""
    cfg = pipeline.config
    update_calibration(
        pipeline.card.name,
        alignment=cfg.alignment,
        flip=cfg.flip,
        precision=cfg.precision,
        **values,
    )


def cmd_lfw(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    pairs = args.pairs or args.data / "pairs.txt"
    folds = heldout_folds(pipeline.card, pairs)
    result = run_lfw(
        pipeline, args.data, pairs, args.out, pad=args.pad, progress=not args.json, only_folds=folds
    )
    if folds is not None:
        result["heldout"] = heldout_summary(pipeline.card, result)
    (args.out / "lfw.json").write_text(json.dumps(result, indent=2))
    if args.update_card:
        store_in_card(pipeline, threshold=result["threshold"], lfw_accuracy=result["accuracy_mean"])
    acc, std = 100 * result["accuracy_mean"], 100 * result["accuracy_std"]
    if "heldout" in result:
        emit(result, args.json, describe_heldout(result, args.out))
        return 0
    text = (
        f"LFW accuracy {acc:.2f} ± {std:.2f} % ({len(result['fold_accuracies'])} folds, "
        f"{result['pairs']} pairs), "
        f"TAR@FAR=1e-3 {100 * result['tar_at_far_1e-3']:.2f} %, AUC {result['auc']:.5f}, "
        f"no face in {result['no_face_found']} of {result['images']} images, "
        f"{result['timing']['images_per_second']:.1f} images/s\n"
        f"results: {args.out / 'lfw.json'}, ROC: {args.out / 'roc.png'}"
    )
    emit(result, args.json, text)
    return 0
