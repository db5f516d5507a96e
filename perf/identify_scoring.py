"""What centroid scoring costs the gateway's identify, at gallery sizes up to 1M faces.

    python -m perf.identify_scoring --sizes 10000 100000 1000000 --out perf/results

The gateway ranks 1:N candidates with the policy's scoring (centroid by default), which
needs every template of a candidate subject, not only the faces the index returned. Two
ways were open:

- **(a) re-score per request** (what ``gateway.service.matching.IndexMatcher`` does): the
  index's nearest faces give the candidate subjects; the best few are re-scored from their
  sealed templates, read in one SQL query and opened. Its cost is that query and the
  decryption, per request; measured here on SQLite and PostgreSQL holding the whole
  record (``size`` sealed templates, 4 per subject), with the index's hits taken from an
  exact search so that only this step is timed (``match_ms``), and the agreement of its
  top-1 with an exact centroid search over every subject (``top1_vs_exact_centroid``).
- **(b) a centroid per subject in the index**: a second collection searched instead of the
  faces, nothing to open per request, but one more vector to write on every enrolment and
  face deletion, and one more collection to keep through repair, re-indexing, key rotation
  and namespace filters. Its query cost is a search over ``size / 4`` vectors instead of
  ``size``: measured here on Milvus Lite (FLAT, the embedded default) beside the face search
  (``lite_*``), up to ``--lite-max`` faces (Lite's own search time grows with the
  collection; a Milvus server's HNSW search hardly does).

Wall times on a shared machine are inflated by the other work on it (the load average is
recorded beside them); CPU times (``*_cpu_ms``: this process's thread, so PostgreSQL's own
share is not in them) hardly depend on it. Also: the count of enrolled subjects
(``gallery_size``; the gateway recounts it in the background), per size. Writes
``identify_scoring.json`` and ``identify_scoring.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from facerec.matching import DEFAULT_SCORING, Hit, IdentificationPolicy
from facerec.models import load_model_card
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.index.milvus import FaceIndex
from gateway.model_ids import published_model_id
from gateway.service.matching import IndexMatcher, hits_wanted
from gateway.storage.database import Database
from perf.common import figure, load, percentiles, record, write_json
from perf.synthetic import DIM, PHOTOS, build_record, seen_again, synthetic

TOP_K = 5
BATCH = 2000  # subjects written per statement


def exact_hits(gallery: np.ndarray, probes: np.ndarray, k: int) -> list[list[Hit]]:
    """The ``k`` nearest faces of each probe by exact search (what the index returns)."""
    out = []
    for lo in range(0, len(probes), 32):
        sims = probes[lo : lo + 32] @ gallery.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, idx in zip(sims, top, strict=True):
            idx = idx[np.argsort(-row[idx])]
            out.append([Hit(f"f{j:08d}", f"s{j // PHOTOS:08d}", float(row[j])) for j in idx])
    return out


class ExactHits:
    """Stands in for the index in :class:`IndexMatcher`: returns the precomputed exact
    hits of the next probe, so that only the re-scoring is timed. Its model is the
    published one, which the record's faces (no ``model_id``) count as."""

    def __init__(self, hits: list[list[Hit]]) -> None:
        self.hits, self.next = hits, 0
        self.model_id = published_model_id()

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> list[list[Hit]]:
        found = [self.hits[self.next + i][:top_k] for i in range(len(embeddings))]
        self.next += len(embeddings)
        return found


def exact_centroid_top1(gallery: np.ndarray, probes: np.ndarray) -> np.ndarray:
    cents = gallery.reshape(-1, PHOTOS, DIM).mean(axis=1)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return np.asarray(np.argmax(probes @ cents.T, axis=1))


@contextmanager
def database(kind: str, folder: Path) -> Iterator[Database]:
    keyring = Keyring(MasterKey.generate())
    if kind == "sqlite":
        db = Database(f"sqlite:///{folder / 'record.sqlite3'}", keyring)
        try:
            yield db
        finally:
            db.engine.dispose()
        return
    from devkit import servers  # the tests' PostgreSQL on loopback

    with servers.postgres_server(folder / "pg") as url:
        db = Database(url, keyring)
        try:
            yield db
        finally:
            db.engine.dispose()


def rescore(
    kind: str,
    gallery: np.ndarray,
    probes: np.ndarray,
    hits: list[list[Hit]],
    folder: Path,
) -> dict[str, Any]:
    """Option (a) on one database: the record built, then IndexMatcher.match per probe."""
    row: dict[str, Any] = {"database": kind}
    with database(kind, folder) as db:
        t = time.perf_counter()
        build_record(db, gallery, BATCH)
        row["record_build_seconds"] = round(time.perf_counter() - t, 1)
        if kind == "postgresql":  # planner statistics, as autovacuum keeps them in service
            with db.engine.connect() as c:
                c.execute(text("ANALYZE"))
                c.commit()
        card = load_model_card()
        policy = IdentificationPolicy.from_card(card, "similarity", True, "int8", DEFAULT_SCORING)
        t = time.perf_counter()
        row["gallery_size"] = db.faces.enrolled_count()
        row["count_ms"] = round((time.perf_counter() - t) * 1e3, 1)
        index = ExactHits(hits)
        matcher = IndexMatcher(policy, index, db.faces, 1e-3)  # type: ignore[arg-type]
        matcher.match(probes[:5], TOP_K)  # warm the connection pool
        index.next = 0
        took, cpu, top1 = [], [], []
        row["load_before"] = load()
        for probe in probes:
            t, c = time.perf_counter(), time.thread_time()
            (ranked,), _ = matcher.match(probe[None], TOP_K)
            cpu.append(time.thread_time() - c)
            took.append(time.perf_counter() - t)
            top1.append(int(ranked[0].subject_id[1:]))
        row["load_after"] = load()
        row["match_ms"] = percentiles(took)
        row["match_cpu_ms"] = percentiles(cpu)  # this thread's CPU (PostgreSQL's not included)
        row["top1"] = top1
    return row


def lite_search(gallery: np.ndarray, probes: np.ndarray, folder: Path) -> dict[str, Any]:
    """Option (b)'s query side on Milvus Lite: a search over one centroid per subject
    beside the search over every face, single probes, FLAT."""
    cents = gallery.reshape(-1, PHOTOS, DIM).mean(axis=1)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    protector = VectorProtector(MasterKey.generate(), DIM)
    out: dict[str, Any] = {}
    for name, vectors, per in (("faces", gallery, 1), ("centroids", cents, PHOTOS)):
        index = FaceIndex(str(folder / f"{name}.db"), protector, prefix=name, index_type="FLAT")
        ids = [f"{name[0]}{i:08d}" for i in range(len(vectors))]
        owners = [f"s{(i * per) // PHOTOS:08d}" for i in range(len(vectors))]
        for lo in range(0, len(vectors), 10_000):
            index.add(ids[lo : lo + 10_000], owners[lo : lo + 10_000], vectors[lo : lo + 10_000])
        index.client.flush(index.collection)
        top = hits_wanted(TOP_K) if name == "faces" else TOP_K
        index.search(probes[:3], top_k=top)  # loads the collection
        took = []
        cpu = []
        for probe in probes[:100]:
            t, c = time.perf_counter(), time.process_time()
            index.search(probe[None], top_k=top)
            cpu.append(time.process_time() - c)  # Milvus Lite runs in this process
            took.append(time.perf_counter() - t)
        out[f"lite_{name}_search_ms"] = percentiles(took)
        out[f"lite_{name}_search_cpu_ms"] = percentiles(cpu)
        out[f"lite_{name}_vectors"] = len(vectors)
        index.drop()
        index.close()
    return out


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    identities = size // PHOTOS
    gallery = synthetic(rng, identities, PHOTOS)
    mated = rng.choice(identities, args.probes, replace=False)
    seen = seen_again(rng, gallery, mated)  # a new photo of each (drawn before strangers)
    strangers = synthetic(rng, args.probes, 1)  # people not enrolled
    probes = np.concatenate([seen, strangers])
    exact = exact_centroid_top1(gallery, probes)
    hits = exact_hits(gallery, probes, hits_wanted(TOP_K))
    row: dict[str, Any] = {"faces": size, "subjects": identities, "probes": len(probes)}
    folder = Path(tempfile.mkdtemp(prefix="facerec-scoring-"))
    try:
        for kind in args.databases:
            (folder / kind).mkdir()
            part = rescore(kind, gallery, probes, hits, folder / kind)
            top1 = np.asarray(part.pop("top1"))
            same = top1 == exact
            part["top1_vs_exact_centroid"] = {
                "mated": round(float(np.mean(same[: args.probes])), 4),
                "strangers": round(float(np.mean(same[args.probes :])), 4),
            }
            part["mated_top1_correct"] = round(float(np.mean(top1[: args.probes] == mated)), 4)
            row[kind] = part
            print(f"{size} {kind}: {json.dumps(part)}", flush=True)
            shutil.rmtree(folder / kind, ignore_errors=True)
        if size <= args.lite_max:
            (folder / "lite").mkdir()
            row.update(lite_search(gallery, probes, folder / "lite"))
            print(f"{size} lite: {json.dumps({k: v for k, v in row.items() if 'lite' in k})}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return row


def plot(rows: list[dict[str, Any]], databases: list[str], path: Path) -> None:
    with figure(path, figsize=(7, 4.5), dpi=110) as (_, ax):
        sizes = [r["faces"] for r in rows]
        for kind in databases:
            for q, style in (("p50", "-"), ("p95", "--")):
                ax.plot(
                    sizes,
                    [r[kind]["match_ms"][q] for r in rows],
                    style,
                    marker="o",
                    label=f"(a) re-score from sealed templates, {kind} {q}",
                )
        lite = [r for r in rows if "lite_faces_search_ms" in r]
        for name in ("faces", "centroids"):
            ax.plot(
                [r["faces"] for r in lite],
                [r[f"lite_{name}_search_ms"]["p50"] for r in lite],
                ":",
                marker="s",
                label=f"Milvus Lite search over {name}, p50",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery (faces; 4 per subject)")
        ax.set_ylabel("ms per probe")
        ax.set_title("identify: centroid scoring's cost")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--probes", type=int, default=200, help="mated probes (as many strangers)")
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--lite-max", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    args = parser.parse_args()
    rows = [run_size(size, args) for size in args.sizes]
    doc = record(top_k=TOP_K, hits=hits_wanted(TOP_K), rows=rows)
    write_json(args.out / "identify_scoring.json", doc)
    plot(rows, args.databases, args.out / "identify_scoring.png")
    print(f"wrote {args.out / 'identify_scoring.json'} and .png")


if __name__ == "__main__":
    main()
