"""``facerec models --from-checkpoint CKPT --name NAME``: a fine-tuned checkpoint made into
the same artefacts as the published model, selectable by name.

1. the checkpoint is checked (format, architecture, every tensor's name and shape) before
   anything is written;
2. ONNX FP32 export, parity with PyTorch on the bundled faces (cosine >= 0.99999);
3. INT8 (calibrated on those crops, first convolution and projection in float) and FP16,
   each compared with FP32; the serving graphs (uint8 crops in, unit embeddings out), each
   checked against its raw graph; the same steps as ``facerec models``;
4. thresholds calibrated on the LFW folds the model did not train on (no identity of
   those folds among the checkpoint's training identities), through the serving path:
   MTCNN, alignment and each precision's serving graph, with and without flip averaging;
5. the files move into ``$FACEREC_HOME/models`` and the card is written last, to
   ``$FACEREC_HOME/models/cards/NAME.json``: a model without its card is not selectable,
   so a failed export leaves nothing half usable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.setup_models import face_images
from export.steps import embedder_parity, face_crops, half_precision, quantise, serving_graphs
from facerec.alignment import crop_box
from facerec.dataset.prepare import aligned_crops
from facerec.detection.mtcnn import MTCNNDetector
from facerec.embedding import OnnxEmbedder, embed_with_flip
from facerec.errors import FaceRecError
from facerec.evaluation.lfw import find_image
from facerec.evaluation.metrics import best_threshold, kfold_accuracy, threshold_at_far
from facerec.evaluation.pairs import read_pairs, unseen_folds
from facerec.imaging.decode import read_image
from facerec.models import (
    BASE_MODEL,
    PRECISIONS,
    ModelCard,
    cards_dir,
    check_model_name,
    embedder_file,
    load_model_card,
    model_path,
    models_dir,
    packaged_models,
)
from facerec.pipeline import PipelineConfig
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.onnx_export import export_onnx

log = logging.getLogger(__name__)


class ExportError(FaceRecError):
    """A checkpoint export that cannot proceed (codes: ``model_exists``,
    ``no_unseen_folds``, ``invalid_model_name``)."""

    code = "export_failed"
    http_status = 422


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[str]:
    """Remove the ``.export-NAME-PID`` folders of exports whose process is gone (killed
    before it could clean up: a few hundred MB each); return their names."""
    removed = []
    for d in out_dir.glob(".export-*-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    if removed:
        log.info("removed the staging folders of interrupted exports: %s", ", ".join(removed))
    return removed


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_crops(
    lfw_dir: Path, keys: list[str], pad: int, progress: bool, home: Path | None
) -> tuple[np.ndarray, list[str]]:
    """Aligned crops of LFW images ``keys`` as the benchmark makes them (edge padding,
    primary face; a centre crop of the unpadded image when no face is found)."""
    card = load_model_card(BASE_MODEL, home)
    paths = [find_image(lfw_dir, k) for k in keys]
    found = aligned_crops(paths, PipelineConfig(), pad, progress=progress, home=home)
    out = np.empty((len(keys), card.input_size, card.input_size, 3), np.uint8)
    no_face = []
    for i, (path, crop) in enumerate(zip(paths, found, strict=True)):
        if isinstance(crop, np.ndarray):
            out[i] = crop
            continue
        no_face.append(keys[i])
        img = read_image(path)
        box = np.array([0, 0, img.shape[1], img.shape[0]], np.float32)
        out[i] = crop_box(img, box, 0, card.input_size)
    return out, no_face


def calibrate(
    card: ModelCard, folder: Path, crops: np.ndarray, pairs: list[Any], index: dict[str, int]
) -> list[dict[str, Any]]:
    """Similarity-alignment calibrations of every precision, with and without flip, from
    the serving graphs in ``folder``: the accuracy-optimal threshold and the FAR = 1e-3
    threshold over ``pairs``, and the k-fold accuracy over their folds."""
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    a = np.array([index[p.a] for p in pairs])
    b = np.array([index[p.b] for p in pairs])
    unseen = ", ".join(str(f) for f in sorted(set(folds.tolist())))
    source = (
        f"the {int((~same).sum())} different-person pairs of LFW folds {unseen} (never trained on)"
    )
    out = []
    for precision in PRECISIONS:
        embedder = OnnxEmbedder(folder / embedder_file(card.name, precision, serving=True), card)
        for flip in (True, False):
            emb = embed_with_flip(embedder, crops, flip)
            scores = (emb[a] * emb[b]).sum(axis=1).astype(np.float64)
            t, _ = best_threshold(scores, same)
            t_far, _ = threshold_at_far(scores, same, 1e-3)
            accs, _ = kfold_accuracy(scores, same, folds)
            out.append(
                {
                    "alignment": "similarity",
                    "flip": flip,
                    "precision": precision,
                    "threshold": round(t, 6),
                    "lfw_accuracy": round(float(accs.mean()), 6),
                    "verification_far": {"thresholds": {"1e-3": round(t_far, 6)}, "source": source},
                }
            )
    return out


def export_checkpoint(
    checkpoint: Path,
    name: str,
    lfw_dir: Path,
    home: Path | None = None,
    force: bool = False,
    progress: bool = True,
    parity_images: int | None = None,
    pad: int = 50,
) -> dict[str, Any]:
    """Export ``checkpoint`` as model ``name``; return its card."""
    check_model_name(name, allow_fused=False)
    if name == BASE_MODEL or name in packaged_models():
        raise ExportError(f"{name} is a packaged model's name", code="model_exists")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.get("meta", {})
    out_dir = models_dir(home)
    card_path = cards_dir(home) / f"{name}.json"
    if card_path.exists() and not force:
        raise ExportError(
            f"a model named {name!r} exists ({card_path}); pass --force to replace it",
            code="model_exists",
        )
    base = load_model_card(BASE_MODEL, home)
    for key in ("pnet", "rnet", "onet"):
        model_path(key, home)  # the detector the parity and calibration crops need
    pairs_file = lfw_dir / "pairs.txt"
    pairs = read_pairs(pairs_file)
    trained = meta.get("identities", [])
    unseen = unseen_folds(pairs, trained)
    if len(unseen) < 2:
        raise ExportError(
            f"the checkpoint trained on identities of {10 - len(unseen)} of LFW's folds; "
            "calibrating and testing needs two folds it never saw",
            code="no_unseen_folds",
        )
    start = time.perf_counter()
    raw = dict(base.raw)
    raw.pop("calibrations", None)
    card = replace(base, name=name, calibrations=(), weights_sha256=ckpt["weights_sha256"])
    model = model_from_checkpoint(ckpt)
    remove_stale_staging(out_dir)
    staging = out_dir / f".export-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        export_onnx(
            model,
            staging / embedder_file(name, "fp32"),
            torch.zeros(2, 3, card.input_size, card.input_size),
            "image",
            ["embedding"],
            {"image": {0: "batch"}, "embedding": {0: "batch"}},
            {
                "producer": "facerec models --from-checkpoint",
                "model": name,
                "weights_sha256": card.weights_sha256,
                "preprocessing": card.preprocessing,
                "embedding_size": str(card.embedding_size),
            },
        )
        images = face_images()[: parity_images or None]
        detector = MTCNNDetector(model_path("pnet", home), model_path("rnet", home),
                                 model_path("onet", home))  # fmt: skip
        crops = face_crops(images, detector.detect(images), card)
        parity, reference = embedder_parity(model, staging, crops, card)
        int8 = quantise(staging, crops, card, reference)
        fp16 = half_precision(staging, crops, card, reference)
        serving = serving_graphs(staging, crops, card)

        chosen = [p for p in pairs if p.fold in unseen]
        keys = sorted({k for p in chosen for k in (p.a, p.b)})
        lfw_crops, no_face = calibration_crops(lfw_dir, keys, pad, progress, home)
        index = {k: i for i, k in enumerate(keys)}
        calibrations = calibrate(card, staging, lfw_crops, chosen, index)

        files = [embedder_file(name, p, s) for p in PRECISIONS for s in (False, True)]
        for f in files:
            os.replace(staging / f, out_dir / f)
        lfw = meta.get("lfw") or {}
        doc = {
            **raw,
            "name": name,
            "description": f"FaceNet Inception-ResNet-v1 {card.embedding_size}-d fine-tuned with "
            f"the triplet loss from {(meta.get('base') or {}).get('model') or 'a checkpoint'}; "
            f"exported from {checkpoint}",
            "weights_sha256": card.weights_sha256,
            "calibrations": calibrations,
            "training": {
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": _sha256(checkpoint),
                "base": meta.get("base"),
                "identities": len(trained),
                "lfw_test_fold": lfw.get("test_fold"),
                "lfw_validation_fold": lfw.get("validation_fold"),
                "config": meta.get("config"),
                "epoch": meta.get("epoch"),
            },
            "calibration_data": {
                "lfw_folds": unseen,
                "pairs": len(chosen),
                "images": len(keys),
                "no_face": no_face,
                "pairs_sha256": _sha256(pairs_file),
                "rule": "LFW folds with no identity among the training identities; threshold "
                "maximising accuracy over their pairs, FAR threshold at 1e-3 over them, "
                "accuracy k-fold over these folds (threshold from the other unseen folds)",
            },
            "export": {
                "parity": parity,
                "int8": int8,
                "fp16": fp16,
                "serving": serving,
                "files": {f: _sha256(out_dir / f) for f in files},
                "seconds": round(time.perf_counter() - start, 1),
            },
        }
        card_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = card_path.with_name(f".{card_path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(card_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return doc
