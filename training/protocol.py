"""LFW's ten-fold protocol for a fine-tuned model, honestly: for each test fold k, a
model fine-tuned only on identities of other folds, selected and thresholded on fold
``(k + 1) % 10``, scored on fold k; the same rule applied to the starting model.

Reported: per fold, the fine-tuned and the starting model's accuracy on the test fold at
the threshold chosen on the validation fold; mean and standard deviation over the folds;
TAR at FAR = 1e-3 over the ten test folds' pairs pooled (each scored by its own model).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from facerec.evaluation.metrics import threshold_at_far
from facerec.evaluation.pairs import Pair
from training.data import CropSet
from training.finetune import Engine, RunOutput, TrainConfig, run_training
from training.inception_resnet_v1 import InceptionResnetV1
from training.splits import lfw_split

log = logging.getLogger(__name__)


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread and pooled TAR @ FAR 1e-3 of per-fold results (each with ``test`` and
    ``baseline.test`` holding ``accuracy``, ``scores`` and ``same``)."""
    done = [f for f in folds if "test" in f]
    out: dict[str, Any] = {"folds_done": [f["split"]["test_fold"] for f in done]}
    if not done:
        return out

    def fine_tuned(fold: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = fold["test"]
        return result

    def starting_model(fold: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = fold["baseline"]["test"]
        return result

    for name, get in (("fine_tuned", fine_tuned), ("starting_model", starting_model)):
        acc = np.array([get(f)["accuracy"] for f in done])
        scores = np.concatenate([get(f)["scores"] for f in done])
        same = np.concatenate([f["test"]["same"] for f in done]).astype(bool)
        _, tar = threshold_at_far(scores, same, 1e-3)
        out[name] = {
            "accuracy_mean": float(acc.mean()),
            "accuracy_std": float(acc.std()),
            "accuracy_min": float(acc.min()),
            "accuracy_max": float(acc.max()),
            "fold_accuracies": acc.tolist(),
            "tar_at_far_1e-3_pooled": tar,
            "auc_mean": float(np.mean([get(f)["auc"] for f in done])),
        }
    diff = np.array([f["test"]["accuracy"] - f["baseline"]["test"]["accuracy"] for f in done])
    out["gain_mean"] = float(diff.mean())
    out["folds_better_same_worse"] = [
        int((diff > 0).sum()),
        int((diff == 0).sum()),
        int((diff < 0).sum()),
    ]
    out["best_epochs"] = [f["best_epoch"] for f in done]
    return out


def plot_folds(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "fine_tuned" not in summary:
        return
    folds = summary["folds_done"]
    x = np.arange(len(folds))
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    ax.bar(
        x - 0.2,
        100 * np.array(summary["starting_model"]["fold_accuracies"]),
        0.4,
        label="published weights",
    )
    ax.bar(
        x + 0.2, 100 * np.array(summary["fine_tuned"]["fold_accuracies"]), 0.4, label="fine-tuned"
    )
    ax.set_xticks(x, [str(f) for f in folds])
    ax.set_xlabel("test fold")
    ax.set_ylabel("accuracy (%)")
    low = 100 * min(summary[m]["accuracy_min"] for m in ("starting_model", "fine_tuned"))
    ax.set_ylim(max(90.0, low - 0.5), 100.05)
    ax.legend(loc="lower right")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lfw_tenfold(
    cs: CropSet,
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    init_state: dict[str, Tensor],
    make_engine: Callable[[InceptionResnetV1, int], Engine],
    out: Path,
    folds: Sequence[int] = range(10),
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    time_budget: float | None = None,
    save_checkpoints: bool = True,
    on_fold: Callable[[int, RunOutput, dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the protocol over ``folds``; ``out/fold-K/`` per fold (with checkpoints when
    ``save_checkpoints``) and ``out/metrics.json`` (rewritten after every fold, so an
    interrupted run keeps what it finished). ``time_budget`` (s) is shared out evenly among
    the folds still to run; ``on_fold(k, run, doc)`` is called after each fold with its
    result and the protocol's document so far."""
    start = time.monotonic()
    results: list[dict[str, Any]] = []
    doc: dict[str, Any] = {}
    for n, k in enumerate(folds):
        deadline = None
        if time_budget is not None:
            left = time_budget - (time.monotonic() - start)
            deadline = time.monotonic() + left / (len(folds) - n)
            if left <= 0:
                log.warning("time budget spent before fold %d", k)
                break
        split = lfw_split(cs, list(pairs), k)
        lfw = {"test_fold": k, "validation_fold": split.info["validation_fold"]}
        fold_meta = {**(meta or {}), "lfw": lfw}
        run = run_training(
            cs,
            split,
            cfg,
            init_state,
            make_engine,
            out / f"fold-{k}",
            fold_meta,
            progress,
            deadline,
            save_checkpoints=save_checkpoints,
        )
        results.append(run.metrics)
        summary = summarise(results)
        doc = {
            "protocol": "LFW View 2, ten folds: train on eight, select and threshold on the "
            "next fold, test on the fold",
            "summary": summary,
            "folds": [{k2: v for k2, v in r.items() if k2 not in ("history",)} for r in results],
            "config": cfg.to_json(),
            "seconds": round(time.monotonic() - start, 1),
            **(extra or {}),
        }
        (out / "metrics.json").write_text(json.dumps(doc, indent=2))
        plot_folds(summary, out / "folds.png", "LFW test folds: threshold from the validation fold")
        if on_fold is not None:
            on_fold(k, run, doc)
    return doc


def markdown_table(doc: dict[str, Any], label: str = "fine-tuned") -> str:
    """The ten-fold result as a Markdown table: one row per test fold, then the mean,
    the spread and the pooled TAR @ FAR 1e-3, the published weights beside."""
    s = doc.get("summary", {})
    if "fine_tuned" not in s:
        return "(no fold finished)"
    rows = [
        "| test fold | validation fold | published weights | " + label + " | best epoch |",
        "|---|---|---|---|---|",
    ]
    for f in doc["folds"]:
        if "test" not in f:
            continue
        before, after = f["baseline"]["test"]["accuracy"], f["test"]["accuracy"]
        rows.append(
            f"| {f['split']['test_fold']} | {f['split']['validation_fold']} | "
            f"{100 * before:.2f} % | {100 * after:.2f} % | {f['best_epoch']} |"
        )
    ft, base = s["fine_tuned"], s["starting_model"]

    def mean(r: dict[str, Any]) -> str:
        return f"**{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} %**"

    rows.append(f"| **mean ± std** | | {mean(base)} | {mean(ft)} | |")
    rows.append(
        f"| min - max | | {100 * base['accuracy_min']:.2f} - {100 * base['accuracy_max']:.2f} % "
        f"| {100 * ft['accuracy_min']:.2f} - {100 * ft['accuracy_max']:.2f} % | |"
    )
    rows.append(
        f"| TAR @ FAR 1e-3 (pooled) | | {100 * base['tar_at_far_1e-3_pooled']:.2f} % "
        f"| {100 * ft['tar_at_far_1e-3_pooled']:.2f} % | |"
    )
    better, same, worse = s["folds_better_same_worse"]
    rows.append(
        f"\nFolds better / same / worse than the published weights: {better} / {same} / {worse}."
    )
    return "\n".join(rows)
