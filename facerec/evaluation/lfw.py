"""The LFW verification benchmark: standard View 2 protocol, end to end from image files.

Every image referenced by ``pairs.txt`` goes through the full pipeline (decode, detect,
align, embed). Accuracy is the mean over 10 folds with the threshold chosen on the other
nine; TAR at FAR=1e-3 and the ROC AUC are computed over all 6,000 pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facerec.batch import ProcessBatchRunner
from facerec.errors import InvalidArgumentError
from facerec.evaluation.measure import machine
from facerec.evaluation.metrics import (
    Roc,
    best_threshold,
    kfold_accuracy,
    roc_curve,
    threshold_at_far,
)
from facerec.evaluation.pairs import read_pairs
from facerec.evaluation.plots import figure
from facerec.fusion import whole_image_crop
from facerec.imaging.decode import read_image
from facerec.pipeline import Face, FacePipeline

log = logging.getLogger(__name__)


def find_image(data_dir: Path, key: str) -> Path:
    """Locate ``key`` in a flat ``images/`` folder, a flat folder, or per-person folders."""
    person = key.rsplit("_", 1)[0]
    for candidate in (
        data_dir / "images" / f"{key}.jpg",
        data_dir / f"{key}.jpg",
        data_dir / person / f"{key}.jpg",
        data_dir / "lfw" / person / f"{key}.jpg",
    ):
        if candidate.is_file():
            return candidate
    raise InvalidArgumentError(f"LFW image {key}.jpg not found under {data_dir}", code="not_found")


@dataclass
class EmbeddingRun:
    keys: list[str]
    embeddings: np.ndarray  # float32[N, D]
    no_face: list[str]
    several_faces: int
    decode_errors: dict[str, str]
    seconds: dict[str, float]
    wall_seconds: float
    faces: list[Face | None]  # the face each embedding came from; None: centre crop
    detected: list[int]  # faces the detector found in each image


def embed_images(
    pipeline: FacePipeline,
    data_dir: Path,
    keys: Sequence[str],
    pad: int,
    progress: bool = True,
    processes: int | None = None,
) -> EmbeddingRun:
    """Embed the primary face of every image in worker processes (decoding included);
    an image with no face gets a centre crop of the unpadded image."""
    paths = [find_image(data_dir, k) for k in keys]
    out = np.zeros((len(keys), pipeline.embedder.embedding_size), np.float32)
    no_face: list[str] = []
    faces: list[Face | None] = [None] * len(keys)
    detected = [0] * len(keys)
    errors: dict[str, str] = {}
    several = 0
    bar = tqdm(total=len(keys), unit="img", desc="LFW", disable=not progress)
    with ProcessBatchRunner(pipeline.config, processes) as runner:
        runner.warm_up()
        start = time.perf_counter()
        for i, result in enumerate(runner.run(paths, pad=pad, primary_only=True)):
            bar.update(1)
            if result.error is not None:
                errors[keys[i]] = f"{result.error.code}: {result.error.message}"
                continue
            assert result.faces is not None
            several += result.faces.detected > 1
            detected[i] = result.faces.detected
            face = result.faces.faces[0] if result.faces.faces else None
            if face is not None and face.embedding is not None:
                out[i] = face.embedding
                faces[i] = face
                continue
            no_face.append(keys[i])
            out[i] = pipeline.embed(whole_image_crop(read_image(paths[i]), pipeline.card))[0]
        wall = time.perf_counter() - start
        seconds = dict(runner.seconds)
    bar.close()
    return EmbeddingRun(list(keys), out, no_face, several, errors, seconds, wall, faces, detected)


def plot_roc(roc: Roc, label: str, path: Path) -> None:
    with figure(path, figsize=(6, 4.5), dpi=120) as (_, ax):
        ax.plot(np.maximum(roc.fpr, 1e-5), roc.tpr, label=label)
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
        ax.set_ylim(0.8, 1.001)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title("LFW verification ROC (6,000 pairs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")


def run_lfw(
    pipeline: FacePipeline,
    data_dir: Path,
    pairs_file: Path,
    out_dir: Path,
    pad: int = 50,
    progress: bool = True,
    only_folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``lfw.json`` and ``roc.png`` to ``out_dir``. With
    ``folds``, only those folds' pairs (a fine-tuned model is scored on the folds it did
    not train on; thresholds still come from the other folds scored)."""
    pairs = read_pairs(pairs_file)
    if only_folds is not None:
        pairs = [p for p in pairs if p.fold in set(only_folds)]
    keys = sorted({p.a for p in pairs} | {p.b for p in pairs})
    run = embed_images(pipeline, data_dir, keys, pad, progress=progress)
    index = {k: i for i, k in enumerate(keys)}
    a = run.embeddings[[index[p.a] for p in pairs]]
    b = run.embeddings[[index[p.b] for p in pairs]]
    scores = (a * b).sum(axis=1).astype(np.float64)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    accs, fold_thresholds = kfold_accuracy(scores, same, folds)
    roc = roc_curve(scores, same)
    threshold, acc_all = best_threshold(scores, same)
    t_far, tar = threshold_at_far(scores, same, 1e-3)
    cfg = pipeline.config
    n = len(keys)
    result: dict[str, Any] = {
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "fold_accuracies": accs.tolist(),
        "fold_thresholds": fold_thresholds.tolist(),
        "tar_at_far_1e-3": tar,
        "auc": roc.auc,
        "threshold": threshold,
        "threshold_accuracy_all_pairs": acc_all,
        "threshold_far_1e-3": t_far,
        "pairs": len(pairs),
        "folds": sorted({int(f) for f in folds}),
        "images": n,
        "no_face_found": len(run.no_face),
        "no_face_images": run.no_face,
        "no_face_handling": "embedded a centre crop of the original (unpadded) image",
        "several_faces": run.several_faces,
        "several_faces_handling": "kept the largest, most central face",
        "decode_errors": run.decode_errors,
        "timing": {
            "wall_seconds": run.wall_seconds,
            "images_per_second": n / run.wall_seconds,
            "stage_seconds": run.seconds,
            "stage_ms_per_image": {k: 1e3 * v / n for k, v in run.seconds.items()},
            "workers": "one process per core, each running the whole pipeline on its files",
            "note": "stage seconds are summed over the worker processes",
        },
        "settings": {
            "model": pipeline.card.name,
            "precision": cfg.precision,
            "alignment": cfg.alignment,
            "flip": cfg.flip,
            "detector": asdict(cfg.detector),
            "pad": pad,
            "pad_mode": "edge replicate",
            "threads": cfg.threads,
        },
        "data": {"dir": str(data_dir), "pairs_file": str(pairs_file)},
        "machine": machine(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    label = f"{cfg.alignment}{'+flip' if cfg.flip else ''} {cfg.precision}: AUC {roc.auc:.5f}"
    plot_roc(roc, label, out_dir / "roc.png")
    np.savez_compressed(out_dir / "scores.npz", scores=scores, same=same, folds=folds)
    return result
