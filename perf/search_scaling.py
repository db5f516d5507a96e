"""1:N search over protected vectors, on a real Milvus server (or Milvus Lite), by gallery size.

    nice -n 10 python -m perf.search_scaling --sizes 10000 100000 1000000 \\
        --out perf/results/search_scaling

For each size it builds what the gateway would hold: a system of record (SQLite) with
size/4 subjects and ``size`` sealed templates of synthetic face embeddings (identities as
random unit centres, each "photo" a noisy copy, so the gallery has the cluster structure of
real templates), and the protected vectors in the gateway's own collection (HNSW, M=16,
efConstruction=200), written through :class:`gateway.index.FaceIndex` in batches. Then:

- insert throughput, and the index build (flush until every row is indexed);
- single-probe search latency (p50/p95/p99) and recall@1 against exact search, for each
  search ``ef`` (the trade-off), and batched probes per second;
- the gateway's identify path without the image pipeline (index search for 16 x top_k
  faces + the SQL lookup of their subjects + ranking: ``IdentificationService.identify_faces``);
- ``facerec reindex``: the command, rebuilding the collection from the system of record.

``--model`` picks the embedding model (default ``facenet128``). A fused model
(``facenet128+dlib128``, :mod:`facerec.fusion`) gets fused synthetic templates: two
independent synthetic galleries, one per part, combined as ``[sqrt(a) f, sqrt(b) d]`` with
the card's part weights (:func:`facerec.fusion.fuse_embeddings`), sealed whole (256-d) in
the record under the model's identity, and indexed through the model's
:class:`facerec.fusion.IndexSpace` (Milvus holds only the first part's protected 128-d
slice; recall@1 is against exact search over that slice). Its identify path is then the
two-stage search: the index's nearest faces, then the fused re-rank of the first
``rerank_limit(top_k)`` subjects with their sealed 256-d templates under the card's policy.
For every model a second, instrumented pass over the probes splits the identify path
(``identify_split_ms``): the index search (first stage), the SQL read of the candidates'
sealed templates, their decryption (data keys unwrapped, templates opened), the ranking
(the re-rank under the policy's scoring), and the rest.

    nice -n 10 python -m perf.search_scaling --model facenet128+dlib128 --sizes 100000 \\
        --probes 1000 --search-nice -10 --skip-reindex --out perf/results/search_scaling_fused
    nice -n 10 python -m perf.search_scaling --model facenet128+dlib128 --sizes 1000000 \\
        --probes 1000 --search-nice -10 --skip-reindex --settle --settle-timeout 1200 \\
        --keep --out perf/results/search_scaling_fused

``--backend server`` (default) starts a Milvus 2.3 standalone server (the ``milvus`` PyPI
package, as the tests do) unless ``--uri`` names one; ``--backend lite`` uses a Milvus Lite
file. Writes ``search_scaling.json`` and ``search_scaling.png`` (latency by size, and recall
against p99 latency as ``ef`` varies), with the machine's load average beside each phase.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from tqdm import tqdm

import gateway.service.matching as matching
import gateway.storage.faces as stored_faces
from facerec.fusion import IndexSpace, fuse_embeddings
from facerec.models import BASE_MODEL, ModelCard, load_model_card
from facerec.pipeline import Face, FacePipeline, PipelineConfig
from gateway.bootstrap import open_database, open_gallery, open_gateway
from gateway.gallery import Gallery
from gateway.index.milvus import SEARCH_EF, FaceIndex
from gateway.service.types import Caller
from gateway.settings import Settings
from gateway.storage.database import Database
from gateway.storage.schema import FaceRow
from perf.common import figure, load, percentiles, record, write_json
from perf.synthetic import PHOTOS, build_record, seen_again, synthetic

BATCH = 10_000  # vectors per insert call (and subjects per statement of the record)
EFS = (16, 32, 64, 128, 256)
DEFAULT_EF = SEARCH_EF  # what FaceIndex.search uses


def synthetic_gallery(
    rng: np.random.Generator, card: ModelCard, identities: int, picked_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gallery float32[identities * PHOTOS, D] and probes float32[picked_count, D] of
    ``card``'s model (D its embedding size), and each probe's identity int[picked_count]:
    :func:`perf.synthetic.synthetic` and :func:`~perf.synthetic.seen_again` for a single
    128-d model; for a fused model one independent synthetic gallery (and probes of the
    same people) per part, fused with the card's part weights
    (:func:`facerec.fusion.fuse_embeddings`)."""
    if not card.parts:
        gallery = synthetic(rng, identities, PHOTOS)
        picked = rng.choice(identities, picked_count, replace=False)
        return gallery, seen_again(rng, gallery, picked), picked
    galleries = [synthetic(rng, identities, PHOTOS) for _ in card.parts]
    picked = rng.choice(identities, picked_count, replace=False)
    probes = [seen_again(rng, g, picked) for g in galleries]
    weights = card.part_weights
    return fuse_embeddings(galleries, weights), fuse_embeddings(probes, weights), picked


def record_model(db: Database, model_id: str) -> None:
    """Mark every template of ``db`` as computed by ``model_id`` (``build_record`` leaves
    the column empty: the published model's), as the gateway records a fused model's."""
    with db.engine.begin() as c:
        c.execute(update(FaceRow).values(model_id=model_id))


def exact_top1(queries: np.ndarray, gallery: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Row index of each query's most similar gallery row (brute force, in chunks)."""
    best = np.full(len(queries), -2.0, np.float32)
    where = np.zeros(len(queries), np.int64)
    for lo in range(0, len(gallery), chunk):
        sims = queries @ gallery[lo : lo + chunk].T
        arg = sims.argmax(axis=1)
        top = sims[np.arange(len(queries)), arg]
        better = top > best
        best[better], where[better] = top[better], arg[better] + lo
    return where


def set_nice(pid: int, value: int) -> None:
    """Set the nice value of every thread of process ``pid`` (Linux: nice is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), value)


@contextlib.contextmanager
def measuring(pids: list[int | None], value: int) -> Iterator[int]:
    """Run the (short, light) latency measurements at nice ``value`` when allowed, the
    heavy phases around them staying at the niceness the benchmark started with; yields
    the niceness in force."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        for pid in pids:
            if pid is not None:
                set_nice(pid, value)
        yield os.getpriority(os.PRIO_PROCESS, 0)
    except PermissionError:
        yield before
    finally:
        for pid in pids:
            if pid is not None:
                set_nice(pid, before)


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MiB."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_indexed(index: FaceIndex, rows: int, timeout: float = 7200) -> None:
    """Flush, then wait until Milvus has built the index over every row."""
    client = index.client
    if index.embedded:
        client.flush(index.collection)
        return
    client.flush(index.collection, timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # (not pending_index_rows: on 2.3.5 it stays above 0 while compaction re-indexes)
        if int(client.describe_index(index.collection, "vector")["indexed_rows"]) >= rows:
            return
        time.sleep(0.5)
    raise TimeoutError(f"index not built after {timeout} s")


def wait_settled(
    pid: int | None, cores: float = 0.1, window: float = 15.0, timeout: float = 3600.0
) -> float | None:
    """Wait until the server process ``pid`` used less than ``cores`` of CPU over ``window``
    seconds: after the index is built, Milvus 2.3 goes on compacting segments and
    re-indexing the merged ones for minutes, and searches measured meanwhile share the
    cores with it. Returns the seconds waited (None: no server process to watch, or it
    did not settle within ``timeout``)."""
    if pid is None:
        return None
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        used = cpu_seconds(pid)
        time.sleep(window)
        if (cpu_seconds(pid) - used) / window < cores:
            return round(time.monotonic() - start, 1)
    return None


def search_sweep(
    index: FaceIndex,
    queries: np.ndarray,
    exact: np.ndarray,
    efs: tuple[int, ...],
    server_pid: int | None,
) -> list[dict[str, Any]]:
    """Per ef: single-probe latency, recall@1 against exact search, and the CPU time per
    probe of the server and of this client (less sensitive to other load than latency)."""
    rows = []
    for ef in efs:
        index.search(queries[:5], top_k=1, ef=ef)  # warm
        took, top1 = [], []
        server0, client0 = cpu_seconds(server_pid), time.process_time()
        for q in queries:
            t = time.perf_counter()
            (hits,) = index.search(q[None], top_k=1, ef=ef)
            took.append(time.perf_counter() - t)
            top1.append(int(hits[0].face_id[1:]))
        server_cpu = (cpu_seconds(server_pid) - server0) / len(queries) * 1e3
        client_cpu = (time.process_time() - client0) / len(queries) * 1e3
        recall = float(np.mean(np.asarray(top1) == exact))
        rows.append(
            {
                "ef": ef,
                "latency_ms": percentiles(took),
                "recall_at_1": recall,
                "server_cpu_ms_per_probe": round(server_cpu, 3) if server_pid else None,
                "client_cpu_ms_per_probe": round(client_cpu, 3),
                "load": load(),
            }
        )
        print(f"  ef={ef}: {rows[-1]}", flush=True)
    return rows


def batched(index: FaceIndex, queries: np.ndarray, batch: int = 100) -> float:
    """Probes per second when sent ``batch`` per search call."""
    t = time.perf_counter()
    for lo in range(0, len(queries), batch):
        index.search(queries[lo : lo + batch], top_k=1, ef=DEFAULT_EF)
    return len(queries) / (time.perf_counter() - t)


SPLIT = ("index_search", "sql", "decrypt", "rank", "other")


class Stopwatch:
    """Seconds spent in the wrapped callables, per part, since the last :meth:`lap`."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = dict.fromkeys(SPLIT, 0.0)

    def wrap(self, part: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - t

        return timed

    def lap(self) -> dict[str, float]:
        spent, self.spent = self.spent, dict.fromkeys(SPLIT, 0.0)
        return spent


@contextlib.contextmanager
def instrumented(matcher: matching.IndexMatcher) -> Iterator[Stopwatch]:
    """``matcher`` with its steps timed (and put back as they were on exit): the index
    search, the candidates' templates read (SQL) and opened (data keys unwrapped and
    templates decrypted, counted apart from the SQL), the ranking under the policy."""
    watch = Stopwatch()
    faces = matcher.faces
    saved_open, saved_rank = stored_faces.open_template, matching.rank_candidates
    matcher.index.search = watch.wrap("index_search", matcher.index.search)  # type: ignore[method-assign]
    faces.candidate_templates = watch.wrap("sql", faces.candidate_templates)  # type: ignore[method-assign]
    faces.keyring.unwrap = watch.wrap("decrypt", faces.keyring.unwrap)  # type: ignore[method-assign]
    stored_faces.open_template = watch.wrap("decrypt", saved_open)
    matching.rank_candidates = watch.wrap("rank", saved_rank)
    try:
        yield watch
    finally:
        for obj, name in (
            (matcher.index, "search"),
            (faces, "candidate_templates"),
            (faces.keyring, "unwrap"),
        ):
            del obj.__dict__[name]  # the instance attribute set above; the method shows again
        stored_faces.open_template, matching.rank_candidates = saved_open, saved_rank


def identify_path(
    settings: Settings, queries: np.ndarray, picked: np.ndarray
) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """The gateway's identify minus the image pipeline: IdentificationService.identify_faces on one
    probe face for a key of the ``default`` namespace (index search for 80 faces, filtered
    by namespace; SQL lookup of their subjects; ranking: for a fused model the re-rank with
    the full fused templates). Returns its latency, then from a second, instrumented pass
    the split of each call into :data:`SPLIT` (``sql`` without the decryption inside it;
    ``other``: the rest of the call) and the total, each as percentiles; and, as a check
    that the templates were found and re-ranked, the share of probes whose first ranked
    subject is their own (``picked``; :meth:`IndexMatcher.match`, seen or not)."""
    gw = open_gateway(settings, FacePipeline.local(PipelineConfig(model=settings.model)))
    try:
        box, marks = np.array([0, 0, 160, 160], np.float32), np.zeros((5, 2), np.float32)
        faces = [Face(box, 0.99, marks, q) for q in queries]
        caller = Caller(key_id="bench", role="identify", namespace="default")
        service = gw.identification
        service.identify_faces(faces[:5], top_k=5, threshold=None, caller=caller)  # warm
        took = []
        for face in faces:
            t = time.perf_counter()
            service.identify_faces([face], top_k=5, threshold=None, caller=caller)
            took.append(time.perf_counter() - t)
        parts: dict[str, list[float]] = {k: [] for k in (*SPLIT, "total")}
        with instrumented(service.matcher) as watch:
            for face in faces:
                t = time.perf_counter()
                service.identify_faces([face], top_k=5, threshold=None, caller=caller)
                total = time.perf_counter() - t
                spent = watch.lap()
                spent["sql"] -= spent["decrypt"]  # the decryption happens inside the read
                spent["other"] = total - sum(spent[k] for k in SPLIT if k != "other")
                for k in SPLIT:
                    parts[k].append(spent[k])
                parts["total"].append(total)
        split = {k: percentiles(v, ("p50", "p95", "mean")) for k, v in parts.items()}
        ranked, _ = service.matcher.match(queries, 5, caller.area)
        own = [
            bool(r) and r[0].subject_id == f"s{i:08d}" for r, i in zip(ranked, picked, strict=True)
        ]
        return percentiles(took), split, float(np.mean(own))
    finally:
        gw.close()


def reindex(settings: Settings, env: dict[str, str]) -> float:
    """Wall time of ``facerec reindex`` (a fresh process, as an operator runs it)."""
    facerec = Path(sys.executable).with_name("facerec")
    t = time.perf_counter()
    done = subprocess.run(
        [str(facerec), "reindex", "--json"], env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"facerec reindex failed: {done.stderr[-2000:]}")
    return took


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env["FACEREC_HOME"] = os.environ.get("FACEREC_HOME", "")
    for name in ("env", "data_dir", "milvus_uri", "milvus_user", "index_type", "model"):
        value = getattr(settings, name)
        if value is not None:
            env[f"FACEREC_{name.upper()}"] = str(value)
    if settings.milvus_password is not None:
        env["FACEREC_MILVUS_PASSWORD"] = settings.milvus_password.get_secret_value()
    return {k: v for k, v in env.items() if v}


def open_indexed(settings: Settings) -> Gallery:
    """The gateway's record and index for ``settings`` (as the service opens them: the
    index holds the model's :class:`~facerec.fusion.IndexSpace`)."""
    card = load_model_card(settings.model)
    return open_gallery(settings, open_database(settings), card.index_space, card.identity)


def close(gallery: Gallery) -> None:
    gallery.close()
    gallery.subjects.engine.dispose()


def run_size(
    size: int, args: argparse.Namespace, target: dict[str, Any], folder: Path
) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    identities = size // PHOTOS
    card = load_model_card(args.model)
    gallery, queries, picked = synthetic_gallery(rng, card, identities, args.probes)
    space: IndexSpace = card.index_space  # exact search over what the index holds
    exact = exact_top1(space.project(queries), space.project(gallery))
    row: dict[str, Any] = {"gallery": size, "identities": identities, "probes": args.probes}

    data = folder / f"g{size}"
    server = {k: v for k, v in target.items() if k != "pid"}
    milvus = {"milvus_uri": str(data / "index.db")} if args.backend == "lite" else server
    settings = Settings(
        env="development", data_dir=data, index_type=args.index_type, model=args.model, **milvus
    )
    t = time.perf_counter()
    db = open_database(settings)
    face_ids, subject_ids = build_record(db, gallery, BATCH, progress=True)
    if card.parts:  # the record's templates are the fused model's (not the published one's)
        record_model(db, card.identity)
    db.engine.dispose()
    row["record_seconds"] = round(time.perf_counter() - t, 2)

    gallery_of = open_indexed(settings)
    index = gallery_of.index.current
    row["load_before"] = load()
    t = time.perf_counter()
    step = args.batch
    for lo in tqdm(range(0, size, step), desc=f"insert {size}", unit_scale=step):
        index.add(face_ids[lo : lo + step], subject_ids[lo : lo + step], gallery[lo : lo + step])
    insert_s = time.perf_counter() - t
    row["insert_seconds"] = round(insert_s, 2)
    row["insert_per_second"] = round(size / insert_s, 1)
    t = time.perf_counter()
    wait_indexed(index, size)
    row["index_build_seconds"] = round(time.perf_counter() - t, 2)
    print(f"{size}: inserted in {insert_s:.1f} s, built in {row['index_build_seconds']} s")

    pid = target.get("pid")
    if args.settle:
        row["settle_seconds"] = wait_settled(pid, timeout=args.settle_timeout)
        print(f"  server settled after {row['settle_seconds']} s", flush=True)
    for _ in range(3):  # the first searches after the build load indexed segments
        batched(index, queries)
    with measuring([os.getpid(), pid], args.search_nice) as nice:
        row["search_nice"] = nice
        row["sweep"] = search_sweep(index, queries, exact, tuple(args.ef), pid)
        default = next(r for r in row["sweep"] if r["ef"] == DEFAULT_EF)
        row["default_ef"] = DEFAULT_EF  # the ef of latency_ms and of the second pass
        row["latency_ms"] = default["latency_ms"]
        row["recall_at_1_vs_exact"] = default["recall_at_1"]
        again = search_sweep(index, queries, exact, (DEFAULT_EF,), pid)[0]
        row["repeat_latency_ms"] = again["latency_ms"]
        row["repeat_recall_at_1"] = again["recall_at_1"]
        row["batch_queries_per_second"] = round(batched(index, queries), 1)
        path, split, rank1 = identify_path(settings, queries, picked)
        row["identify_path_ms"], row["identify_split_ms"] = path, split
        row["identify_rank1"] = rank1  # probes whose first ranked subject is their own
    row["server_rss_mb"] = rss_mb(pid)
    print(f"  identify path: {row['identify_path_ms']}", flush=True)
    print(f"  split: {row['identify_split_ms']}", flush=True)
    close(gallery_of)
    row["load_after_search"] = load()

    if not args.skip_reindex:
        took = reindex(settings, settings_env(settings))
        row["reindex_seconds"] = round(took, 2)
        gallery_of = open_indexed(settings)
        row["reindex_count"] = gallery_of.index.current.count()
        gallery_of.index.current.drop()
        close(gallery_of)
        print(f"  facerec reindex: {took:.1f} s", flush=True)
    else:
        gallery_of = open_indexed(settings)
        gallery_of.index.current.drop()
        close(gallery_of)
    row["load_after"] = load()
    shutil.rmtree(data, ignore_errors=True)
    return row


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    sizes = [r["gallery"] for r in rows]
    with figure(path, 1, 2, figsize=(11, 4.2), dpi=110) as (fig, (a, b)):
        for q in ("p50", "p95", "p99"):
            a.plot(sizes, [r["latency_ms"][q] for r in rows], marker="o", label=f"search {q}")
        a.plot(
            sizes,
            [r["identify_path_ms"]["p95"] for r in rows],
            marker="s",
            linestyle="--",
            label="identify path p95 (index + SQL)",
        )
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("gallery size (protected vectors)")
        a.set_ylabel(f"single probe, ms (ef={DEFAULT_EF})")
        a.legend(fontsize=8)
        a.grid(True, alpha=0.3)
        for r in rows:
            sweep = r["sweep"]
            b.plot(
                [s["latency_ms"]["p99"] for s in sweep],
                [s["recall_at_1"] for s in sweep],
                marker="o",
                label=f"{r['gallery']:,}",
            )
            for s in sweep:
                b.annotate(
                    str(s["ef"]),
                    (s["latency_ms"]["p99"], s["recall_at_1"]),
                    fontsize=6,
                    xytext=(2, -8),
                    textcoords="offset points",
                )
        b.set_xscale("log")
        b.set_xlabel("single-probe p99 latency, ms (labels: ef)")
        b.set_ylabel("recall@1 vs exact search")
        b.legend(title="gallery", fontsize=8)
        b.grid(True, alpha=0.3)
        fig.suptitle(title)


@contextlib.contextmanager
def milvus_server(args: argparse.Namespace, folder: Path) -> Iterator[dict[str, Any]]:
    """Gateway settings for the Milvus server to measure: ``--uri``, or one started here."""
    if args.backend == "lite":
        yield {}
        return
    if args.uri:
        yield {"milvus_uri": args.uri, "milvus_token": os.environ.get("MILVUS_TOKEN")}
        return
    from devkit.servers import milvus_standalone

    with milvus_standalone(folder / "milvus", tls=False) as server:
        yield {**server.settings(), "pid": server.proc.pid if server.proc else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--model",
        default=BASE_MODEL,
        help="embedding model (a fused one, facenet128+dlib128: fused synthetic templates, "
        "its first part indexed, the identify path re-ranking with the fused templates)",
    )
    parser.add_argument("--backend", choices=("server", "lite"), default="server")
    parser.add_argument("--uri", help="an existing Milvus server (token in $MILVUS_TOKEN)")
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--ef", type=int, nargs="+", default=list(EFS))
    parser.add_argument("--index-type", choices=("HNSW", "FLAT"), default="HNSW")
    parser.add_argument("--skip-reindex", action="store_true")
    parser.add_argument(
        "--settle",
        action="store_true",
        help="after the index build, wait until the server's background compaction and "
        "re-indexing are over (its CPU under 0.1 core for 15 s) before measuring searches",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=3600.0,
        help="--settle: measure anyway after this many seconds (settle_seconds: null)",
    )
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="faces per insert call (enrolments: 1)"
    )
    parser.add_argument(
        "--search-nice",
        type=int,
        default=0,
        help="niceness of the client and server while latencies are measured (root may "
        "lower it below the benchmark's own; the heavy phases keep the benchmark's)",
    )
    parser.add_argument("--out", type=Path, default=Path("perf/results/search_scaling"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the other sizes' rows already in --out"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default /tmp)")
    args = parser.parse_args()
    if DEFAULT_EF not in args.ef:
        args.ef.append(DEFAULT_EF)
    card = load_model_card(args.model)  # an unknown model fails before anything starts
    rows: list[dict[str, Any]] = []
    meta = {
        "model": card.identity,
        "embedding_size": card.embedding_size,
        "indexed_size": card.index_space.size,
        "part_weights": list(card.part_weights) if card.parts else None,
        "backend": args.backend,
        "nice": os.nice(0),
        "load_at_start": load(),
        "index": f"{args.index_type} (HNSW: M=16 efConstruction=200), COSINE, protected vectors",
        "insert_batch": args.batch,
    }
    out = args.out / f"search_scaling_{args.backend}_{args.index_type.lower()}.json"
    if args.keep and out.exists():  # rows of other sizes from an earlier run stay
        earlier = json.loads(out.read_text())
        if earlier["meta"].get("model", BASE_MODEL).split(":")[0] != args.model:
            parser.error(f"--keep: {out} holds another model's rows; choose another --out")
        rows = [r for r in earlier["rows"] if r["gallery"] not in args.sizes]
        if "machine" in earlier:  # what that run's rows were measured on
            earlier["meta"]["machine"] = earlier["machine"]
        meta["earlier_runs"] = [*earlier["meta"].pop("earlier_runs", []), earlier["meta"]]
    doc = record(meta=meta, rows=rows)
    folder = Path(tempfile.mkdtemp(prefix="facerec-search-", dir=args.work))
    try:
        with milvus_server(args, folder) as server:
            for size in args.sizes:
                rows.append(run_size(size, args, server, folder))
                rows.sort(key=lambda r: int(r["gallery"]))
                write_json(out, doc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    what = "Milvus 2.3 standalone" if args.backend == "server" else "Milvus Lite"
    over = f"{args.index_type} over protected vectors"
    if card.parts:
        over += f" ({args.model}: first part indexed, fused re-rank)"
    plot(rows, out.with_suffix(".png"), f"{what}: {over}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
