"""1:N search over protected vectors in Milvus: latency and recall@1 against exact search.

    python -m perf.search_scaling --sizes 10000 100000 1000000 --out perf/results

For each gallery size it fills a fresh Milvus Lite collection (HNSW, M=16,
efConstruction=200) with protected vectors of synthetic face embeddings (identities as
random unit centres, each "photo" a noisy copy, so the gallery has the cluster structure of
real templates), then runs probes (other noisy copies of enrolled identities) one at a time
and in batches, and compares the top-1 with exact (brute-force) search on the raw vectors.
Writes ``search_scaling.json`` and ``search_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.index.milvus import FaceIndex

DIM = 128
PHOTOS_PER_IDENTITY = 4
NOISE = 0.6  # per-dimension noise relative to the centre: same-identity cosine ~0.7


def synthetic(rng: np.random.Generator, identities: int, photos: int) -> np.ndarray:
    centres = rng.standard_normal((identities, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, photos, axis=0)
    x += NOISE / np.sqrt(DIM) * rng.standard_normal(x.shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_size(size: int, probes: int, ef: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    identities = size // PHOTOS_PER_IDENTITY
    gallery = synthetic(rng, identities, PHOTOS_PER_IDENTITY)
    owners = np.repeat(np.arange(identities), PHOTOS_PER_IDENTITY)
    picked = rng.choice(identities, probes, replace=False)
    centres_again = gallery[picked * PHOTOS_PER_IDENTITY]  # a photo of each picked identity
    queries = centres_again + NOISE / np.sqrt(DIM) * rng.standard_normal(
        centres_again.shape
    ).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    folder = Path(tempfile.mkdtemp(prefix="facerec-search-"))
    try:
        index = FaceIndex(str(folder / "index.db"), VectorProtector(MasterKey.generate(), DIM))
        ids = [f"f{i}" for i in range(size)]
        subjects = [f"s{o}" for o in owners]
        start = time.perf_counter()
        for lo in range(0, size, 10_000):
            index.add(ids[lo : lo + 10_000], subjects[lo : lo + 10_000], gallery[lo : lo + 10_000])
        index.count()  # flush
        insert_s = time.perf_counter() - start
        index.search(queries[:1], top_k=1, ef=ef)  # first search builds/loads the index
        build_s = time.perf_counter() - start - insert_s

        single = []
        top1: list[str] = []
        for q in queries:
            t = time.perf_counter()
            (hits,) = index.search(q[None], top_k=1, ef=ef)
            single.append(time.perf_counter() - t)
            top1.append(hits[0].face_id)
        t = time.perf_counter()
        index.search(queries, top_k=1, ef=ef)
        batch_s = time.perf_counter() - t
        index.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    exact = np.argmax(queries @ gallery.T, axis=1)
    recall = float(np.mean([int(f[1:]) == e for f, e in zip(top1, exact, strict=True)]))
    same_identity = float(
        np.mean([owners[int(f[1:])] == p for f, p in zip(top1, picked, strict=True)])
    )
    lat = np.asarray(single) * 1e3
    return {
        "gallery": size,
        "identities": identities,
        "probes": probes,
        "ef": ef,
        "insert_seconds": round(insert_s, 2),
        "index_build_seconds": round(build_s, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "mean": round(float(lat.mean()), 3),
        },
        "batch_queries_per_second": round(probes / batch_s, 1),
        "recall_at_1_vs_exact": recall,
        "top1_same_identity": same_identity,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["gallery"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for q in ("p50", "p95", "p99"):
        a.plot(sizes, [r["latency_ms"][q] for r in rows], marker="o", label=q)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("gallery size (protected vectors)")
    a.set_ylabel("single-probe search latency (ms)")
    a.legend()
    a.grid(True, alpha=0.3)
    b.plot(sizes, [r["recall_at_1_vs_exact"] for r in rows], marker="o")
    b.set_xscale("log")
    b.set_ylim(0.9, 1.005)
    b.set_xlabel("gallery size")
    b.set_ylabel("recall@1 vs exact search")
    b.grid(True, alpha=0.3)
    fig.suptitle("Milvus Lite HNSW over protected vectors")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        row = run_size(size, args.probes, args.ef, seed=size)
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_scaling.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "search_scaling.png")
    print(f"wrote {args.out / 'search_scaling.json'} and {args.out / 'search_scaling.png'}")


if __name__ == "__main__":
    main()
