"""A fine-tuned model against the published one on the LFW folds it never trained on.

    python -m perf.finetune_lfw --model NAME --run RUN --data ../shared/datasets/lfw

runs ``facerec bench lfw --model NAME`` (the serving path: MTCNN, alignment, the exported
ONNX graph) once per precision (``--precision fp32 int8``), which scores only the folds the
model's card says it never trained on, each at the threshold of the other(s); then scores
the published model's pairs of the same folds by the same rule, from its committed
full-LFW run (``perf/results/lfw/similarity_flip_PRECISION/scores.npz``). RUN is the
``facerec train`` run the checkpoint came from (a single split or a ten-fold run; several
when a ten-fold run was done in parts): its training figures (PyTorch, threshold from the
validation fold) are copied beside, with each fold's curves.

Writes ``OUT/finetune_lfw.json`` and ``OUT/finetune_lfw.png``, keeps each bench run under
``OUT/finetune/NAME-PRECISION/``, and copies RUN's per-fold curves and metrics and the
model's card. ``--summarize`` only rebuilds the summary from bench runs already there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facerec.evaluation.metrics import kfold_accuracy, threshold_at_far
from facerec.models import cards_dir
from perf.common import figure, write_json


def bench(model: str, precision: str, data: Path, target: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "facerec.cli.main",
        "bench",
        "lfw",
        "--model",
        model,
        "--precision",
        precision,
        "--data",
        str(data),
        "--out",
        str(target),
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def same_folds(published: Path, folds: list[int], same: np.ndarray) -> dict[str, Any]:
    """The published model's accuracy on ``folds`` only, each fold at the threshold of the
    other ``folds`` (the rule ``facerec bench lfw --model`` applies to a fine-tuned model)."""
    npz = np.load(published / "scores.npz")
    keep = np.isin(npz["folds"], folds)
    if not np.array_equal(npz["same"][keep], same):
        raise SystemExit(f"{published}: its pairs are not the fine-tuned run's pairs")
    accs, thresholds = kfold_accuracy(npz["scores"][keep], npz["same"][keep], npz["folds"][keep])
    all_folds = json.loads((published / "lfw.json").read_text())["fold_accuracies"]
    return {
        "fold_accuracies": {str(f): float(a) for f, a in zip(folds, accs, strict=True)},
        "fold_thresholds": {str(f): float(t) for f, t in zip(folds, thresholds, strict=True)},
        "same_folds_threshold_from_nine": {str(f): float(all_folds[f]) for f in folds},
        "source": str(published / "scores.npz"),
    }


def training_figures(runs: list[Path]) -> dict[str, Any]:
    """What ``facerec train`` measured (PyTorch FP32, flip-averaged served crops), over
    one or more runs (a ten-fold run done in parts: ``--folds 0,1,2`` then ``3,...``)."""
    folds: list[dict[str, Any]] = []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        folds += metrics["folds"] if "summary" in metrics else [metrics]
    folds.sort(key=lambda f: f["split"]["test_fold"])
    per_fold = [
        {
            "test_fold": f["split"]["test_fold"],
            "validation_fold": f["split"]["validation_fold"],
            "train_identities": f["split"]["train_identities"],
            "best_epoch": f["best_epoch"],
            "fine_tuned": f["test"]["accuracy"],
            "starting_model": f["baseline"]["test"]["accuracy"],
            "throughput": f["throughput"],
        }
        for f in folds
    ]
    tuned = np.array([f["fine_tuned"] for f in per_fold])
    start = np.array([f["starting_model"] for f in per_fold])
    same = np.concatenate([np.asarray(f["test"]["same"], bool) for f in folds])
    pooled = {
        key: threshold_at_far(np.concatenate([np.asarray(t["scores"]) for t in tests]), same, 1e-3)[
            1
        ]
        for key, tests in (
            ("fine_tuned", [f["test"] for f in folds]),
            ("starting_model", [f["baseline"]["test"] for f in folds]),
        )
    }
    summary = {
        "folds_done": [f["test_fold"] for f in per_fold],
        "fine_tuned_mean": float(tuned.mean()),
        "fine_tuned_std": float(tuned.std()),
        "starting_model_mean": float(start.mean()),
        "starting_model_std": float(start.std()),
        "tar_at_far_1e-3_pooled": pooled,
        "folds_better_same_worse": [
            int((tuned > start).sum()),
            int((tuned == start).sum()),
            int((tuned < start).sum()),
        ],
    }
    return {
        "runs": [str(r) for r in runs],
        "summary": summary,
        "folds": per_fold,
        "config": folds[0]["config"],
    }


def summarize(model: str, precisions: list[str], out: Path, runs: list[Path]) -> dict[str, Any]:
    rows = {}
    for precision in precisions:
        target = out / "finetune" / f"{model}-{precision}"
        result = json.loads((target / "lfw.json").read_text())
        npz = np.load(target / "scores.npz")
        folds = [int(f) for f in result["folds"]]
        h = result["heldout"]
        published = same_folds(
            out / "lfw" / f"similarity_flip_{precision}", folds, npz["same"].astype(bool)
        )
        rows[precision] = {
            "command": f"facerec bench lfw --model {model} --precision {precision} "
            f"--data ../shared/datasets/lfw --out {target}",
            "folds": folds,
            "test_fold": h["test_fold"],
            "pairs": result["pairs"],
            "fine_tuned": {
                "fold_accuracies": {str(k): float(v) for k, v in h["fold_accuracies"].items()},
                "auc": result["auc"],
                "tar_at_far_1e-3_pooled": result["tar_at_far_1e-3"],
            },
            "published": published,
        }
    return {
        "model": model,
        "rule": "each scored fold at the accuracy-optimal threshold of the other scored fold",
        "by_precision": rows,
        "training": training_figures(runs),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["by_precision"]
    train = result["training"]["folds"]
    with figure(path, 1, 2, figsize=(11, 4)) as (fig, axes):
        ax = axes[0]
        labels, tuned, base = [], [], []
        for precision, row in rows.items():
            for fold, acc in row["fine_tuned"]["fold_accuracies"].items():
                role = "test" if int(fold) == row["test_fold"] else "validation"
                labels.append(f"{precision}\nfold {fold} ({role})")
                tuned.append(100 * acc)
                base.append(100 * row["published"]["fold_accuracies"][fold])
        x = np.arange(len(labels))
        ax.bar(x - 0.2, base, 0.4, label="published facenet128")
        ax.bar(x + 0.2, tuned, 0.4, label=result["model"])
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(ylabel="accuracy (%)", ylim=(97, 100.2), title="served (ONNX), unseen folds")
        ax.legend(loc="lower right", fontsize=8)
        ax = axes[1]
        x = np.arange(len(train))
        ax.bar(x - 0.2, [100 * f["starting_model"] for f in train], 0.4, label="starting model")
        ax.bar(x + 0.2, [100 * f["fine_tuned"] for f in train], 0.4, label="fine-tuned")
        ax.set_xticks(x, [str(f["test_fold"]) for f in train])
        ax.set(
            xlabel="test fold",
            ylabel="test accuracy (%)",
            ylim=(97, 100.2),
            title="facerec train, ten-fold protocol (PyTorch FP32)",
        )
        ax.legend(loc="lower right", fontsize=8)
        fig.suptitle("CPU fine-tune (cached trunk, Block8 + bottleneck trained) on LFW folds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", type=Path, nargs="+", required=True, help="facerec train run(s)")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if not args.summarize:
        for precision in args.precision:
            target = args.out / "finetune" / f"{args.model}-{precision}"
            bench(args.model, precision, args.data, target)
    result = summarize(args.model, args.precision, args.out, args.run)
    curves = args.out / "finetune" / f"{args.model}-run"
    curves.mkdir(parents=True, exist_ok=True)
    for run in args.run:
        for name in ("curves.png", "history.json", "config.json", "metrics.json"):
            for src in sorted(run.glob(f"fold-*/{name}")):
                dst = curves / src.relative_to(run)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    card = cards_dir() / f"{args.model}.json"
    shutil.copyfile(card, args.out / "finetune" / f"{args.model}-card.json")
    write_json(args.out / "finetune_lfw.json", result)
    plot(result, args.out / "finetune_lfw.png")
    for precision, row in result["by_precision"].items():
        t = str(row["test_fold"])
        print(
            f"{precision}: test fold {t}: {result['model']} "
            f"{100 * row['fine_tuned']['fold_accuracies'][t]:.2f} %, published "
            f"{100 * row['published']['fold_accuracies'][t]:.2f} % (same fold, same rule)"
        )


if __name__ == "__main__":
    main()
