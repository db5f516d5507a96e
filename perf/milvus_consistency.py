"""What each Milvus read consistency level costs a search, and whether it sees a face
written just before (the choice behind ``FACEREC_MILVUS_CONSISTENCY``).

    nice -n 10 python -m perf.milvus_consistency --out perf/results/search_scaling

Starts a Milvus 2.3 standalone server (as the tests do), fills one collection with
``--gallery`` protected vectors through :class:`gateway.index.milvus.FaceIndex`, then for each
level: single-probe search latency with no write in between, and a loop of "write one
face, then search for it at once" (latency, and how often the new face was found) from a
second client first (another gateway process: a replica behind the same load balancer),
then from the writing client. The last row is ``Session`` with the deployment's write
marks shared through a database (:mod:`gateway.storage.index_marks`), as the gateway
runs it. Writes ``consistency.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.index.milvus import Consistency, FaceIndex, MilvusOptions
from gateway.storage.index_marks import IndexMarks
from gateway.storage.schema import open_engine
from perf.common import load, percentiles, record, write_json
from perf.synthetic import synthetic

LEVELS: tuple[Consistency, ...] = ("Strong", "Session", "Bounded", "Eventually")


def _marks(url: str | None) -> IndexMarks | None:
    return None if url is None else IndexMarks(open_engine(url))


def _reader(
    uri: str,
    options: dict[str, Any],
    level: Consistency,
    secret: bytes,
    conn: Any,
    marks_url: str | None = None,
) -> None:
    """Another gateway process: answers each vector sent with its top-1 face id and the
    search's time."""
    index = FaceIndex(
        uri,
        VectorProtector(MasterKey.from_bytes(secret), 128),
        options=MilvusOptions(**options, consistency=level),
        marks=_marks(marks_url),
    )
    conn.send("ready")
    while (vector := conn.recv()) is not None:
        t = time.perf_counter()
        (hits,) = index.search(vector[None], top_k=1)
        conn.send((hits[0].face_id if hits else None, time.perf_counter() - t))
    index.close()


def measure(
    uri: str,
    options: dict[str, Any],
    level: Consistency,
    gallery: np.ndarray,
    rounds: int,
    marks_url: str | None = None,
) -> dict[str, Any]:
    """One level: quiet searches, then write-then-search rounds: another process (a
    replica) searches first, then the writer. With ``marks_url`` both share the
    deployment's write marks (gateway.storage.index_marks) through that database."""
    secret = MasterKey.generate().secret
    opts = MilvusOptions(**options, consistency=level)
    writer = FaceIndex(
        uri,
        VectorProtector(MasterKey.from_bytes(secret), 128),
        options=opts,
        marks=_marks(marks_url),
    )
    # another gateway process (pymilvus keeps Session timestamps per process)
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    reader = multiprocessing.get_context("spawn").Process(
        target=_reader, args=(uri, options, level, secret, theirs, marks_url)
    )
    try:
        ids = [f"f{i}" for i in range(len(gallery))]
        writer.add(ids, ["s"] * len(ids), gallery)
        writer.client.flush(writer.collection)
        reader.start()
        assert ours.recv() == "ready"
        time.sleep(3)
        rng = np.random.default_rng(1)
        quiet = []
        for q in gallery[rng.choice(len(gallery), rounds, replace=False)]:
            t = time.perf_counter()
            writer.search(q[None], top_k=1)
            quiet.append(time.perf_counter() - t)
        fresh = synthetic(rng, rounds, 1)
        own, other, own_found, theirs_found = [], [], 0, 0
        for i, v in enumerate(fresh):
            writer.add([f"new{i}"], ["s"], v[None])
            ours.send(v)  # another replica searches at once, before the writer
            found, seconds = ours.recv()
            theirs_found += found == f"new{i}"
            other.append(seconds)
            t = time.perf_counter()
            (hits,) = writer.search(v[None], top_k=1)
            own.append(time.perf_counter() - t)
            own_found += hits[0].face_id == f"new{i}"
        return {
            "level": level + (" + write marks" if marks_url else ""),
            "search_ms": percentiles(quiet),
            "search_by_another_process_after_a_write_ms": percentiles(other),
            "new_face_found_by_another_process": theirs_found / rounds,
            "search_after_own_write_ms": percentiles(own),
            "new_face_found_by_writer": own_found / rounds,
            "load": load(),
        }
    finally:
        if reader.is_alive():
            ours.send(None)
            reader.join(timeout=30)
        writer.drop()
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("perf/results/search_scaling"))
    args = parser.parse_args()
    from devkit.servers import milvus_standalone

    gallery = synthetic(np.random.default_rng(0), args.gallery // 4, 4)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="facerec-consistency-") as folder,
        milvus_standalone(Path(folder), tls=False) as server,
    ):
        options = {"user": server.user, "password": server.password}
        marks = f"sqlite:///{Path(folder) / 'marks.sqlite3'}"
        for level, shared in [(level, None) for level in LEVELS] + [("Session", marks)]:
            rows.append(measure(server.uri, options, level, gallery, args.rounds, shared))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"server": "Milvus 2.3.5 standalone", "gallery": args.gallery, "rounds": args.rounds}
    write_json(args.out / "consistency.json", record(meta=meta, rows=rows))
    print(f"wrote {args.out / 'consistency.json'}")


if __name__ == "__main__":
    main()
