"""An independent check of ``facerec bench dataset``'s 1:1 figures on a large set.

Takes a ``report.json``, embeds the photos it used with ``facerec embed --single --json``
(the plain command, its own process), scores **every** pair (the benchmark samples its
impostor pairs past ``--max-pairs``) and finds the EER with a direct threshold sweep, no
code of the benchmark's. The two must agree to within the sampling error of the
benchmark's impostor sample.

    python -m perf.dataset_check perf/results/dataset-lfw/report.json \
        --out perf/results/dataset-lfw/check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from perf.common import record, write_json


def embed(photos: list[Path]) -> np.ndarray:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "facerec.cli.main",
            "embed",
            "--single",
            "--json",
            *map(str, photos),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(done.stdout)
    by_path = {e["image"]: e["faces"][0]["embedding"] for e in doc["images"] if "faces" in e}
    return np.array([by_path[str(p)] for p in photos], np.float64)


def sweep_eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """min over thresholds t of max(FRR(t), FAR(t)), t over every genuine score."""
    g = np.sort(genuine)
    i = np.sort(impostor)
    ts = np.unique(g)
    frr = np.searchsorted(g, ts, side="left") / len(g)
    far = 1.0 - np.searchsorted(i, ts, side="left") / len(i)
    return float(np.min(np.maximum(frr, far)))


def all_pairs(x: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    genuine, impostor = [], []
    for lo in range(0, len(x), 512):
        sims = x[lo : lo + 512] @ x.T
        rows = np.arange(lo, min(lo + 512, len(x)))
        upper = np.arange(len(x))[None, :] > rows[:, None]
        same = owner[rows][:, None] == owner[None, :]
        genuine.append(sims[upper & same])
        impostor.append(sims[upper & ~same].astype(np.float32))
    return np.concatenate(genuine), np.concatenate(impostor)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="a report.json of facerec bench dataset")
    p.add_argument("--out", type=Path, required=True, help="where the check's JSON goes")
    args = p.parse_args(argv)
    report: dict[str, Any] = json.loads(args.report.read_text())
    failed = {f["file"] for g in report["dataset"]["failures"].values() for f in g["files"]}
    root = Path(report["dataset"]["dir"])
    photos = sorted(
        f for f in root.glob("*/*") if not f.name.startswith(".") and str(f) not in failed
    )
    x = embed(photos)
    owner = np.unique([f.parent.name for f in photos], return_inverse=True)[1]
    genuine, impostor = all_pairs(x, owner)
    eer = sweep_eer(genuine, impostor)
    v = report["verification"]
    # the benchmark's impostor side is a sample of n pairs: its FAR at a threshold has a
    # binomial standard error of sqrt(p (1 - p) / n)
    n = v["impostor_pairs"]
    doc = record(
        photos=len(photos),
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
        eer_all_pairs=eer,
        eer_report=v["eer"],
        report_impostor_pairs=n,
        sampling_std=float(np.sqrt(eer * (1 - eer) / n)),
        agrees=bool(abs(eer - v["eer"]) <= 3 * np.sqrt(eer * (1 - eer) / n) + 1 / len(genuine)),
    )
    write_json(args.out, doc)
    print(json.dumps(doc, indent=2))
    return 0 if doc["agrees"] else 1


if __name__ == "__main__":
    sys.exit(main())
