"""What limits the fused model at FPIR 1e-3: its ceiling over the weight, and its tail.

    python -m perf.fusion_tail --data /work/shared/datasets/lfw --out perf/results

Issue 21 set DIR >= 80 % at FPIR 1e-3 (G = 1,000, up to 3 images, centroid scoring) as
the fused model's goal; the honest figure (weight and thresholds from the other half) is
lower. This asks whether any weight could reach it, and why not:

- **The ceiling.** For each part weight ``a`` of a grid (the fused cosine
  ``a·cos_FaceNet + (1 − a)·cos_dlib``: ``[√a·f, √(1 − a)·d]``), DIR at FPIR 1e-3 and 1e-2
  for G = 1,000 on each half with the threshold set on that half's own strangers
  (``oracle``: better than any deployment can do, since nothing is held out).
- **The tail.** With the card's weights, the strangers that score highest on each half
  (a stranger's best subject, its own excluded): the probe image, the subject it hits,
  the fused score and each part's cosine against that subject's centroid, with each
  part's z-score under the card's normalisation (how many impostor standard deviations
  above the impostor mean). If the parts' errors were independent, a pair that one part
  scores high would sit near the mean for the other; ``both_above`` counts the tail's
  pairs that both parts put more than 3 standard deviations up.

Same embeddings as ``perf.fusion_search`` (``--cache``: ``bench lfw-openset``'s
``embeddings.npz`` for the fused model, or embedded and cached). Writes
``fusion_tail.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facerec.evaluation.lfw_faces import LfwFaces
from facerec.evaluation.openset_lfw import Identities, searches, split_halves
from facerec.fusion import FusionSpec, fuse_embeddings, split_embeddings
from facerec.matching import Scoring, centroid
from facerec.models import load_model_card
from perf.common import record, write_json
from perf.fusion_search import MODEL, fused_lfw_faces, fused_lfw_parser

GALLERY = 1000
GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
FPIRS = (1e-3, 1e-2)
ENROLMENT = 3


def ceiling(
    faces: LfwFaces, parts: list[np.ndarray], ids: Identities, halves: np.ndarray
) -> list[dict[str, Any]]:
    """Per weight of :data:`GRID`, the oracle DIR on each half."""
    rows = []
    for a in GRID:
        x = fuse_embeddings(parts, [a, 1.0 - a])
        weighted = LfwFaces(**{**faces.__dict__, "embeddings": x})
        per_half = []
        for half in (0, 1):
            s = searches(weighted, ids, np.flatnonzero(halves == half), ENROLMENT, Scoring())
            per_half.append(
                {f"{f:g}": s.mated.dir(s.nonmated.threshold(f, GALLERY), GALLERY) for f in FPIRS}
            )
        rows.append({"facenet_weight": a, "dir_by_half": per_half})
        print(f"a = {a:.2f}: {per_half}", flush=True)
    return rows


def tail(
    faces: LfwFaces,
    parts: list[np.ndarray],
    ids: Identities,
    halves: np.ndarray,
    normalisation: list[tuple[float, float]],
    top: int,
) -> list[dict[str, Any]]:
    """The ``top`` highest-scoring strangers of each half (the card's fused embeddings)."""
    out = []
    x = faces.embeddings
    for half in (0, 1):
        pool = np.flatnonzero(halves == half)
        templates = [ids.images[i][: min(ENROLMENT, len(ids.images[i]) - 1) or 1] for i in pool]
        cents = np.stack([centroid(x[t]) for t in templates])
        part_cents = [np.stack([centroid(p[t]) for t in templates]) for p in parts]
        rows = np.concatenate([ids.images[i] for i in pool])
        own = np.concatenate([np.full(len(ids.images[i]), s) for s, i in enumerate(pool)])
        scores = x[rows] @ cents.T
        scores[np.arange(len(rows)), own] = -3.0
        best = scores.argmax(axis=1)
        score = scores[np.arange(len(rows)), best]
        for r in np.argsort(-score)[:top]:
            cos = [float(p[rows[r]] @ c[best[r]]) for p, c in zip(parts, part_cents, strict=True)]
            z = [(c - m) / s for c, (m, s) in zip(cos, normalisation, strict=True)]
            out.append(
                {
                    "half": half,
                    "probe": faces.keys[rows[r]],
                    "subject": ids.names[pool[best[r]]],
                    "fused": round(float(score[r]), 4),
                    "cosine": [round(c, 4) for c in cos],
                    "z": [round(v, 2) for v in z],
                }
            )
    return out


def main() -> None:
    parser = fused_lfw_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=20, help="strangers listed per half")
    args = parser.parse_args()
    _, faces = fused_lfw_faces(args)
    card = load_model_card(MODEL)
    sizes = [p.embedding_size for p in card.parts]
    parts = split_embeddings(faces.embeddings, sizes, card.part_weights)
    spec = FusionSpec.from_dict(card.raw["fusion"])
    normalisation = [(n.impostor_mean, n.impostor_std) for n in spec.normalisation]
    ids = Identities.of(faces)
    halves = split_halves(ids)
    strangers = tail(faces, parts, ids, halves, normalisation, args.top)
    both = sum(1 for s in strangers if min(s["z"]) > 3.0)
    doc = record(
        model=MODEL,
        identity=card.identity,
        parts=list(spec.parts),
        card_part_weights=list(card.part_weights),
        normalisation=normalisation,
        gallery=GALLERY,
        protocol=(
            "LFW open-set (merged names, halves of seed 0), up to 3 enrolment images, "
            "centroid scoring; oracle thresholds (each half's own strangers)"
        ),
        ceiling=ceiling(faces, parts, ids, halves),
        strangers=strangers,
        both_above=both,
    )
    write_json(args.out / "fusion_tail.json", doc)
    best = max(doc["ceiling"], key=lambda r: min(h["0.001"] for h in r["dir_by_half"]))
    print(
        f"best weight for the worse half at 1e-3: a = {best['facenet_weight']}: "
        f"{[round(h['0.001'], 4) for h in best['dir_by_half']]}; "
        f"{both} of {len(strangers)} top strangers have both parts above 3 std"
    )


if __name__ == "__main__":
    main()
