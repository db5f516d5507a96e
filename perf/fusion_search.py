"""The fused model's two-stage search against exhaustive fusion, on LFW: which K loses nothing.

    python -m perf.fusion_search --data /work/shared/datasets/lfw --out perf/results

The gateway's index holds only a fused model's first part's vectors (FaceNet's slice of
``[√a·f, √b·d]``, renormalised: :class:`facerec.fusion.IndexSpace`); the fused score
decides over the subjects it finds (``gateway.service.matching.IndexMatcher.match``): the
index's ``hits_wanted(top_k)`` nearest faces, the first ``K`` subjects among them (by
their best face; ``rerank_limit(top_k)`` in the gateway), re-scored with all their full
templates under the card's policy (centroid). This compares, per probe, that decision with
the exhaustive one (the best subject by the fused centroid score over the whole gallery,
accepted at the card's threshold for FPIR ``--fpir`` and the gallery's size).

- **Protocol**: the open-set benchmark's (:mod:`facerec.evaluation.openset_lfw`): LFW
  identities (merged names), two halves (seed 0), up to 3 enrolment images per subject
  (the first min(3, n - 1)), galleries of G subjects drawn from one half (``--galleries``
  random ones for G = 1,000; the whole half for ``all``), mated probes (the enrolled
  people's other images) and non-mated probes (every image of a person not in the
  gallery).
- **Exact first stage**: the nearest faces are found exactly (a FLAT index); an HNSW index
  may miss a true nearest face now and then, which is not measured here.
- **The figures**, per G and K: ``lost``, the exhaustive search's accepted decisions
  (mated probes: ``accepted_matches``, ``right_matches`` of them naming the right subject;
  non-mated probes: ``false_alarms``) that the two-stage search does not make, and
  ``lost_fraction`` of the accepted mated ones. The second stage scores exactly, so its
  best score is at most the exhaustive one: it never accepts a probe the exhaustive search
  refuses, and it loses a decision (refuses it, or names another subject above the
  threshold) exactly when the exhaustive best subject is not among the first ``K``
  subjects of the first ``hits`` faces. ``rank1``: every mated decision, whatever its
  score (no threshold). ``needed``: over the accepted matches,
  the largest subject rank (the K) and face rank (the hits) that the exhaustive best
  subject has in the first stage.

The fused LFW embeddings come from ``--cache`` (the ``embeddings.npz`` of ``facerec bench
lfw-openset --model facenet128+dlib128 --out DIR``), or are embedded (and cached) with the
local pipeline. Writes ``fusion_search.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from facerec.evaluation.lfw_faces import LfwFaces, load_or_embed
from facerec.evaluation.openset_lfw import Identities, enrol, split_halves
from facerec.fusion import IndexSpace
from facerec.matching import centroid
from facerec.models import load_model_card
from facerec.pipeline import FacePipeline, PipelineConfig
from gateway.service.matching import hits_wanted, rerank_limit
from perf.common import record, write_json

MODEL = "facenet128+dlib128"
TOP_K = 5  # the gateway's default top_k
KS = (1, 2, 3, 5, 10, 15, 20, 30, 50)


def stage_ranks(
    probes_index: np.ndarray,
    faces_index: np.ndarray,
    face_subject: np.ndarray,
    subjects: int,
    target: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each probe (float32[N, d] indexed vectors, against the gallery's faces'
    float32[F, d] of subjects ``face_subject`` int[F], sorted, every subject with a face),
    the first stage's rank (0-based)
    of subject ``target[n]``: among the subjects ordered by their best face, and of its
    best face among the faces. Ties count against the target."""
    scores = probes_index @ faces_index.T  # [N, F]
    starts = np.searchsorted(face_subject, np.arange(subjects))  # faces grouped by subject
    best = np.maximum.reduceat(scores, starts, axis=1)  # [N, S]: each subject's best face
    own = best[np.arange(len(best)), target]
    subject_rank = (best > own[:, None]).sum(axis=1)
    face_rank = (scores > own[:, None]).sum(axis=1)
    return subject_rank, face_rank


def gallery_run(
    faces: LfwFaces,
    identities: Identities,
    pool: np.ndarray,
    thresholds: dict[str, float],
    space: IndexSpace,
    hits: int,
) -> dict[str, Any]:
    """Exhaustive against two-stage decisions for the gallery of identities ``pool``."""
    en = enrol(identities, pool, 3)
    x = faces.embeddings
    centroids = np.stack([centroid(x[rows]) for rows in en.templates])  # full, 256-d
    face_rows = np.concatenate(en.templates)
    face_subject = np.concatenate([np.full(len(r), s) for s, r in enumerate(en.templates)])
    faces_index = space.project(x[face_rows])
    in_gallery = set(int(i) for i in pool)
    strangers = np.concatenate(
        [identities.images[i] for i in range(len(identities)) if i not in in_gallery]
    )
    out: dict[str, Any] = {"subjects": len(pool), "faces": len(face_rows)}
    for kind, rows, owner in (
        ("mated", en.probes, en.probe_subject),
        ("nonmated", strangers, None),
    ):
        fused = x[rows] @ centroids.T  # exhaustive fused centroid scores
        best = fused.argmax(axis=1)
        top = fused[np.arange(len(rows)), best]
        sr, fr = stage_ranks(space.project(x[rows]), faces_index, face_subject, len(pool), best)
        per_fpir = {}
        for fpir, t in thresholds.items():
            accepted = top >= t  # every accepted decision, right or wrong
            lost = {str(k): int((accepted & ~((sr < k) & (fr < hits))).sum()) for k in KS}
            per_fpir[fpir] = {
                "threshold": t,
                "accepted": int(accepted.sum()),
                "right": int((accepted & (best == owner)).sum()) if owner is not None else 0,
                "lost": lost,
                "needed_k": int(sr[accepted].max()) + 1 if accepted.any() else 0,
                "needed_hits": int(fr[accepted].max()) + 1 if accepted.any() else 0,
                "k_histogram": np.bincount(sr[accepted], minlength=1).tolist(),
            }
        out[kind] = {"probes": len(rows), "by_fpir": per_fpir}
    return out


def summarise(runs: list[dict[str, Any]], fpir: str) -> dict[str, Any]:
    """Totals over ``runs`` (one gallery size) at ``fpir``."""
    accepted = sum(r["mated"]["by_fpir"][fpir]["accepted"] for r in runs)
    alarms = sum(r["nonmated"]["by_fpir"][fpir]["accepted"] for r in runs)
    lost = {k: sum(r["mated"]["by_fpir"][fpir]["lost"][str(k)] for r in runs) for k in KS}
    lost_alarms = {k: sum(r["nonmated"]["by_fpir"][fpir]["lost"][str(k)] for r in runs) for k in KS}
    right = sum(r["mated"]["by_fpir"][fpir]["right"] for r in runs)
    return {
        "accepted_matches": accepted,  # mated probes' accepted decisions
        "right_matches": right,  # of which the right subject
        "lost": {str(k): v for k, v in lost.items()},
        "lost_fraction": {str(k): (v / accepted if accepted else 0.0) for k, v in lost.items()},
        "false_alarms": alarms,
        "false_alarms_lost": {str(k): v for k, v in lost_alarms.items()},
        "needed_k": max(r["mated"]["by_fpir"][fpir]["needed_k"] for r in runs),
        "needed_hits": max(r["mated"]["by_fpir"][fpir]["needed_hits"] for r in runs),
    }


def fused_lfw_parser(description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks over the fused model's LFW embeddings: ``--data``,
    ``--out`` and ``--cache``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/datasets/lfw"))
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "facerec" / f"lfw-{MODEL}.npz",
        help="the fused LFW embeddings (bench lfw-openset's OUT/embeddings.npz)",
    )
    return parser


def fused_lfw_faces(args: argparse.Namespace) -> tuple[FacePipeline, LfwFaces]:
    """The fused pipeline and its LFW faces (``args.cache``, or embedded and cached)."""
    pipeline = FacePipeline.local(PipelineConfig(model=MODEL))
    return pipeline, load_or_embed(pipeline, args.data, args.cache, progress=True)


def main() -> None:
    parser = fused_lfw_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--galleries", type=int, default=10, help="random galleries of 1,000")
    parser.add_argument("--fpir", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipeline, faces = fused_lfw_faces(args)
    card = load_model_card(MODEL)
    cfg = pipeline.config
    table = card.identification_table(cfg.alignment, cfg.flip, cfg.precision, "centroid")
    space = card.index_space
    hits = hits_wanted(TOP_K)
    identities = Identities.of(faces)
    halves = split_halves(identities, args.seed)
    rng = np.random.default_rng(args.seed)
    fpirs = [f"{f:g}" for f in args.fpir]
    sizes: dict[str, list[dict[str, Any]]] = {"1000": [], "all": []}
    for half in (0, 1):
        pool = np.flatnonzero(halves == half)
        for g in ("1000", "all"):
            draws = (
                [pool]
                if g == "all"
                else [np.sort(rng.choice(pool, 1000, replace=False)) for _ in range(args.galleries)]
            )
            for chosen in draws:
                thresholds = {f: table.threshold(float(f), len(chosen))[0] for f in fpirs}
                thresholds["rank1"] = -1.0  # every decision, whatever its score
                run = gallery_run(faces, identities, chosen, thresholds, space, hits)
                run["half"] = half
                sizes[g].append(run)
    summary = {g: {f: summarise(runs, f) for f in [*fpirs, "rank1"]} for g, runs in sizes.items()}
    doc = record(
        model=MODEL,
        identity=card.identity,
        index_space={"embedding_size": space.embedding_size, "size": space.size},
        top_k=TOP_K,
        hits=hits,
        gateway_k=rerank_limit(TOP_K),
        ks=list(KS),
        protocol=(
            "LFW open-set (merged names, halves of seed 0), up to 3 enrolment images, centroid "
            f"scoring; G = 1000: {args.galleries} random galleries per half; G = all: each "
            "half; exact first stage over the FaceNet slice"
        ),
        summary=summary,
        runs=sizes,
    )
    write_json(args.out / "fusion_search.json", doc)
    for g, by_fpir in summary.items():
        for f, s in by_fpir.items():
            lost = ", ".join(f"K={k}: {s['lost'][str(k)]}" for k in KS)
            print(
                f"G={g} FPIR {f}: {s['accepted_matches']} accepted matches; lost {lost}; "
                f"needed K {s['needed_k']}, hits {s['needed_hits']}; false alarms "
                f"{s['false_alarms']}"
            )


if __name__ == "__main__":
    main()
