"""Speed of the second embedder (dlib's ResNet, ONNX FP32 and INT8) next to FaceNet INT8.

    python -m perf.dlib_embedder --out perf/results

Network only: each graph gets ready inputs (dlib: RGB 150x150 chips, its mean subtraction
inside the graph; FaceNet: prewhitened 160x160 crops) from the bundled LFW faces, so the
figures compare the embedders, not the alignment. For each graph, thread count (one, all
cores) and batch size, faces/s over a fixed time budget; the configurations run once per
round, rounds interleaved (these machines' speed drifts), and the best round is kept with
the per-call latency percentiles of batch 1. dlib itself (``dlib-bin``, one chip per call)
is timed for reference when installed. Writes ``dlib_embedder.json``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from export.dlib_align import mtcnn_chip, primary_faces
from export.dlib_steps import DLIB_MODEL, dlib_available, to_input
from facerec.detection.mtcnn import MTCNNDetector
from facerec.embedding import per_image_standardization
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.models import embedder_key, facerec_home, model_path
from facerec.runtime import create_session, default_threads
from perf.common import ROOT, load, percentiles, record, write_json

GRAPHS = {
    "dlib128-fp32": embedder_key(DLIB_MODEL, "fp32", serving=False),
    "dlib128-int8": embedder_key(DLIB_MODEL, "int8", serving=False),
    "facenet128-int8": "facenet128-int8",
}
BATCHES = (1, 8, 32)


def _chips() -> np.ndarray:
    """The MTCNN-landmark dlib chips of the bundled test faces: uint8[N, 150, 150, 3]."""
    paths = sorted((ROOT / "tests" / "data" / "lfw").glob("*.jpg"))
    paths += sorted((ROOT / "tests" / "data" / "gallery").glob("*.jpg"))
    images = [pad_edges(read_image(p), 50) for p in paths]
    detector = MTCNNDetector(model_path("pnet"), model_path("rnet"), model_path("onet"))
    faces = primary_faces(images, detector.detect(images))
    return np.stack([mtcnn_chip(images[i], marks) for i, _, marks in faces])


def _feed(name: str, chips: np.ndarray, batch: int) -> np.ndarray:
    picked = chips[np.arange(batch) % len(chips)]
    if name.startswith("dlib"):
        return to_input(picked)
    crops = np.stack([cv2.resize(c, (160, 160), interpolation=cv2.INTER_LINEAR) for c in picked])
    return per_image_standardization(crops)


def _time(session: ort.InferenceSession, x: np.ndarray, budget_s: float) -> list[float]:
    """Seconds per call, calls repeated for ``budget_s`` after one warm-up call."""
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    calls: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(calls) < 3:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        calls.append(time.perf_counter() - t0)
    return calls


def _dlib_reference(chips: np.ndarray, count: int) -> dict[str, Any]:
    import dlib

    weights = facerec_home() / "weights" / "dlib_face_recognition_resnet_model_v1.dat"
    net = dlib.face_recognition_model_v1(str(weights))
    net.compute_face_descriptor(chips[0])
    calls = []
    for chip in chips[:count]:
        t0 = time.perf_counter()
        net.compute_face_descriptor(np.ascontiguousarray(chip))
        calls.append(time.perf_counter() - t0)
    return {
        "engine": "dlib (dlib-bin wheel), compute_face_descriptor, one chip per call",
        "faces": len(calls),
        "faces_per_s": round(len(calls) / sum(calls), 2),
        "latency_ms": percentiles(calls),
    }


def run(rounds: int, budget_s: float, threads: Sequence[int]) -> dict[str, Any]:
    chips = _chips()
    sessions = {
        (name, t): create_session(model_path(key), t)
        for name, key in GRAPHS.items()
        for t in threads
    }
    feeds = {(name, b): _feed(name, chips, b) for name in GRAPHS for b in BATCHES}
    best: dict[tuple[str, int, int], float] = defaultdict(float)
    latency: dict[tuple[str, int], list[float]] = {}
    loads = [load()]
    for _ in range(rounds):
        for (name, t), session in sessions.items():
            for b in BATCHES:
                calls = _time(session, feeds[name, b], budget_s)
                rate = b * len(calls) / sum(calls)
                if rate > best[name, t, b]:
                    best[name, t, b] = rate
                    if b == 1:
                        latency[name, t] = calls
        loads.append(load())
    results = [
        {
            "graph": name,
            "threads": t,
            "batch": b,
            "faces_per_s": round(best[name, t, b], 1),
            **({"latency_ms": percentiles(latency[name, t])} if b == 1 else {}),
        }
        for name in GRAPHS
        for t in threads
        for b in BATCHES
    ]
    doc: dict[str, Any] = {
        "what": "network-only faces/s, best of interleaved rounds",
        "rounds": rounds,
        "budget_s_per_config": budget_s,
        "load_average": loads,
        "results": results,
    }
    if dlib_available():
        doc["dlib_reference"] = _dlib_reference(chips, 20)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per configuration")
    args = parser.parse_args(argv)
    cores = default_threads()
    threads = (1, cores) if cores > 1 else (1,)
    doc = record(**run(args.rounds, args.budget, threads))
    write_json(args.out / "dlib_embedder.json", doc)
    for row in doc["results"]:
        print(
            f"{row['graph']:16s} threads {row['threads']} batch {row['batch']:2d}: "
            f"{row['faces_per_s']:7.1f} faces/s"
        )
    if "dlib_reference" in doc:
        print(f"dlib itself: {doc['dlib_reference']['faces_per_s']} faces/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
