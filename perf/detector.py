"""The in-process MTCNN against the PyTorch reference: parity on LFW and the cost per call.

    python -m perf.detector --lfw ../shared/datasets/lfw --images 400 --out perf/results

* **parity**: every image of an evenly spread LFW sample (edge-padded as the LFW benchmark
  pads it) through both detectors; how many images differ in face count or by more than
  0.5 px in a box or landmark, and the largest difference;
* **call sizes**: one-threaded ONNX Runtime time per 1,000 input pixels (P-Net) or per
  crop (R-Net, O-Net) against the size of a call, the curve behind the detector's tile and
  chunk sizes.

Writes ``detector.json`` and ``detector.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from facerec.detection.mtcnn import MTCNNDetector
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.models import facerec_home, model_path
from facerec.runtime import create_session
from perf.common import figure, record, write_json
from perf.scenes import lfw_files

TOLERANCE_PX = 0.5
PNET_SIDES = [(60, 60), (150, 150), (100, 384), (200, 384), (288, 384), (600, 1000)]
CROP_BATCHES = {"rnet": (24, [8, 16, 32, 64, 128, 256]), "onet": (48, [4, 8, 16, 32, 64])}


def parity(lfw: Path, images: int) -> dict[str, Any]:
    from export.mtcnn_weights import load_mtcnn
    from training.mtcnn_reference import EagerMTCNN

    w = facerec_home() / "weights"
    eager = EagerMTCNN(*load_mtcnn(w / "pnet.pt", w / "rnet.pt", w / "onet.pt"))
    ours = MTCNNDetector(model_path("pnet"), model_path("rnet"), model_path("onet"))
    worst, off = 0.0, []
    for path in tqdm(lfw_files(lfw, images), desc="parity", unit="img"):
        image = pad_edges(read_image(path), 50)
        boxes, scores, marks = eager.detect(image)
        det = ours.detect([image])[0]
        if len(boxes) != len(det):
            off.append({"image": path.name, "reference": len(boxes), "ours": len(det)})
            continue
        if len(boxes) == 0:
            continue
        a, b = np.argsort(-scores), np.argsort(-det.scores)
        gap = float(
            max(np.abs(boxes[a] - det.boxes[b]).max(), np.abs(marks[a] - det.landmarks[b]).max())
        )
        worst = max(worst, gap)
        if gap > TOLERANCE_PX:
            off.append({"image": path.name, "max_px": round(gap, 3)})
    return {
        "images": images,
        "tolerance_px": TOLERANCE_PX,
        "images_off": len(off),
        "off": off,
        "max_abs_diff_px_within_tolerance": worst,
    }


def _time(session: ort.InferenceSession, x: np.ndarray, budget_s: float = 1.0) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        session.run(None, {name: x})
        runs += 1
    return (time.perf_counter() - start) / runs


def call_sizes() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    pnet = create_session(model_path("pnet"), threads=1)
    out: dict[str, Any] = {"pnet_us_per_1000_px": {}}
    for h, w in PNET_SIDES:
        x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        out["pnet_us_per_1000_px"][f"{h}x{w}"] = round(1e6 * _time(pnet, x) / (h * w / 1e3), 1)
    for net, (side, batches) in CROP_BATCHES.items():
        session = create_session(model_path(net), threads=1)
        out[f"{net}_us_per_crop"] = {
            str(b): round(
                1e6 * _time(session, rng.uniform(-1, 1, (b, 3, side, side)).astype(np.float32)) / b,
                1,
            )
            for b in batches
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    sizes = result["call_sizes"]
    with figure(path, 1, 3, figsize=(12, 3.5)) as (fig, axes):
        panels = [
            ("P-Net", "pnet_us_per_1000_px", "input size (one image per call)", "µs per 1000 px"),
            ("R-Net", "rnet_us_per_crop", "crops per call", "µs per crop"),
            ("O-Net", "onet_us_per_crop", "crops per call", "µs per crop"),
        ]
        for ax, (title, key, xlabel, ylabel) in zip(axes, panels, strict=True):
            ax.plot(list(sizes[key]), list(sizes[key].values()), "o-")
            ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, None))
            ax.tick_params(axis="x", labelsize=7)
        fig.suptitle("one-threaded ONNX Runtime cost against call size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = record(parity=parity(args.lfw, args.images), call_sizes=call_sizes())
    write_json(args.out / "detector.json", result)
    plot(result, args.out / "detector.png")
    p = result["parity"]
    worst = p["max_abs_diff_px_within_tolerance"]
    print(
        f"parity: {p['images_off']} of {p['images']} images off by more than "
        f"{TOLERANCE_PX} px (largest difference otherwise {worst:.2g} px)"
    )
    print(json.dumps(result["call_sizes"], indent=1))


if __name__ == "__main__":
    main()
