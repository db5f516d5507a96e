"""The fused model with dlib's own face chips: does dlib's shape predictor lift DIR at 1e-3?

    python -m perf.fusion_align --data /work/shared/datasets/lfw --out perf/results

The fused model's dlib part embeds a 150x150 chip cut from MTCNN's 5 landmarks warped to a
measured template (:data:`export.dlib_align.MTCNN_TEMPLATE`); dlib's network was trained on
chips cut by dlib's own 5-point shape predictor. This re-embeds the dlib part of every LFW
image with dlib's chips and runs the fused model's honest open-set protocol on both, side
by side; nothing else changes:

- **The chips.** For each image in which MTCNN found a face (the cache's primary face, on
  the edge-padded image), ``shape_predictor_5_face_landmarks`` (CC0, ``$FACEREC_HOME/
  weights``) is run on the MTCNN box and ``dlib.get_face_chip(image, shape, 150, 0.25)``
  cuts the chip, as :func:`export.dlib_align.dlib_chips` does. The images with no face
  keep their centre-crop embedding in both variants. The predictor and the chip cut are
  timed per face (one core, the load average recorded with them).
- **The embeddings.** The dlib part's graph of the pipeline's precision (the
  pipeline's own part embedder, flip-averaged as the pipeline does); the FaceNet part
  and the MTCNN detections are the cached ones, unchanged (``--cache``: ``bench
  lfw-openset``'s ``embeddings.npz``, or embedded and cached). ``control``: for every
  ``--control-every``-th face the pipeline's own dlib crop is embedded again, and must
  match the cached dlib part (cosine ~ 1), so that only the chips differ.
- **The protocol.** :func:`facerec.evaluation.fusion_weight.choose_weight` (what ``facerec
  bench lfw-openset --choose-weight`` runs: merged names, halves of seed 0, centroid
  scoring, up to 3 enrolment images, normalisation and weight chosen on one half,
  thresholds from that half's strangers, DIR and FPIR measured on the other; both
  directions and pooled by searches), for G = 1,000 and all identities of a half, at
  FPIR 1e-3 and 1e-2. ``reproduces_committed``: the MTCNN-template variant's pooled
  figures against ``perf/results/openset/<model>/fusion.json``.
- **1:1.** LFW View 2 ten-fold accuracy (threshold from the other nine folds) and TAR at
  FAR 1e-3 over the 6,000 pairs, of the fused embeddings at the card's part weights and of
  the dlib part alone.

``--precision int8 fp32`` runs both graphs (each with its own cache, ``--cache`` and
``--cache-fp32``). Writes ``fusion_align.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export.dlib_align import CHIP_PADDING, CHIP_SIZE
from facerec.detection.types import Detections
from facerec.embedding import FaceEmbedder, embed_with_flip
from facerec.evaluation.fusion_weight import choose_weight
from facerec.evaluation.lfw import find_image
from facerec.evaluation.lfw_faces import LfwFaces, load_or_embed
from facerec.evaluation.metrics import kfold_accuracy, threshold_at_far
from facerec.evaluation.pairs import read_pairs
from facerec.fusion import FusedEmbedder, fuse_embeddings, split_embeddings, unpack_crops
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.models import facerec_home
from facerec.pipeline import FacePipeline, PipelineConfig
from perf.common import ROOT, load, record, write_json
from perf.fusion_search import MODEL, fused_lfw_parser

PAD = 50  # bench lfw-openset's edge padding: the cached boxes are in the padded image
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"  # export.dlib_steps.PREDICTOR_FILE
CHUNK = 512  # chips embedded at a time
GALLERIES = ("1000", "all")


def read_padded(data: Path, key: str) -> np.ndarray:
    """An LFW image as the benchmark detected it: decoded, edge-padded by :data:`PAD`."""
    return pad_edges(read_image(find_image(data, key)), PAD)


def shape_predictor_chips(
    data: Path, faces: LfwFaces, predictor_path: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """dlib's chips uint8[F, 150, 150, 3] of the found faces (their rows int[F]): the
    5-point predictor on the cached MTCNN box, ``get_face_chip`` (150 px, padding 0.25),
    and the per-face times of the predictor and the chip cut."""
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path))
    rows = np.flatnonzero(faces.found)
    chips = np.empty((len(rows), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    t_predict = np.empty(len(rows))
    t_chip = np.empty(len(rows))
    t_decode = 0.0
    loads = [load()]
    for n, i in enumerate(tqdm(rows, desc="dlib chips", unit="face")):
        t0 = time.perf_counter()
        image = read_padded(data, faces.keys[i])
        t1 = time.perf_counter()
        x1, y1, x2, y2 = (round(float(v)) for v in faces.boxes[i])
        shape = predictor(image, dlib.rectangle(x1, y1, x2, y2))
        t2 = time.perf_counter()
        chips[n] = dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        t3 = time.perf_counter()
        t_decode += t1 - t0
        t_predict[n], t_chip[n] = t2 - t1, t3 - t2
    loads.append(load())
    ms = {
        name: {
            "mean": round(1e3 * float(t.mean()), 4),
            "median": round(1e3 * float(np.median(t)), 4),
            "p95": round(1e3 * float(np.percentile(t, 95)), 4),
        }
        for name, t in (("shape_predictor", t_predict), ("get_face_chip", t_chip))
    }
    timing = {
        "faces": len(rows),
        "ms_per_face": ms,
        "decode_and_pad_ms_per_face": round(1e3 * t_decode / max(len(rows), 1), 4),
        "seconds_total": round(float(t_predict.sum() + t_chip.sum()) + t_decode, 2),
        "load_average_before_after": loads,
        "note": "one thread, wall clock per call (perf_counter), the image 250x250 after padding",
    }
    return chips, rows, timing


def dlib_embedder(pipeline: FacePipeline) -> FaceEmbedder:
    """The pipeline's own dlib part embedder (the second part of the fused model)."""
    embedder = pipeline.embedder
    assert isinstance(embedder, FusedEmbedder), "a fused pipeline has a FusedEmbedder"
    return embedder.parts[1]


def embed_chips(embedder: FaceEmbedder, chips: np.ndarray, flip: bool) -> np.ndarray:
    """float32[N, 128] unit embeddings of dlib chips, :data:`CHUNK` at a time, flip as
    the pipeline does (:func:`facerec.embedding.embed_with_flip`)."""
    out = np.empty((len(chips), embedder.embedding_size), np.float32)
    for lo in tqdm(range(0, len(chips), CHUNK), desc="dlib embed", unit="chunk"):
        out[lo : lo + CHUNK] = embed_with_flip(embedder, chips[lo : lo + CHUNK], flip)
    return out


def control(
    pipeline: FacePipeline, data: Path, faces: LfwFaces, cached: np.ndarray, every: int
) -> dict[str, Any]:
    """The pipeline's own dlib crops (MTCNN template) of every ``every``-th found face
    embedded again, against the cached dlib part ``cached`` float32[N, 128]."""
    rows = np.flatnonzero(faces.found)[::every]
    sizes = [p.input_size for p in pipeline.card.parts]
    crops = []
    for i in rows:
        det = Detections(
            faces.boxes[i : i + 1], faces.scores[i : i + 1], faces.landmarks[i : i + 1]
        )
        crops.append(unpack_crops(pipeline.align(read_padded(data, faces.keys[i]), det), sizes)[1])
    again = embed_chips(dlib_embedder(pipeline), np.concatenate(crops), pipeline.config.flip)
    cos = (again * cached[rows]).sum(axis=1)
    return {"faces": len(rows), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def summary(found: dict[str, Any]) -> dict[str, Any]:
    """The figures of one :func:`choose_weight` run: per direction the weight and the
    held-out (calibrated) and oracle DIR with the measured FPIR; pooled."""
    directions = []
    for d in found["directions"]:
        figures = {}
        for g in GALLERIES:
            r = d["report"][g]
            figures[g] = {
                "gallery_size": r["gallery_size"][0],
                "mated_searches": r["mated_searches"],
                "nonmated_searches": r["nonmated_searches"],
                "rank1": r["rank1"],
                **{
                    f: {
                        "dir": c["dir"],
                        "measured_fpir": c["measured_fpir"],
                        "oracle_dir": r["dir_at_fpir"][f],
                    }
                    for f, c in r["calibrated"].items()
                },
            }
        directions.append(
            {
                "calibration_half": d["calibration_half"],
                "evaluation_half": d["evaluation_half"],
                "weight": d["weight"],
                "part_weights": d["part_weights"],
                "normalisation": d["normalisation"],
                "criterion_by_weight": {f"{r['w']:g}": r["dir"] for r in d["grid"]},
                "report": figures,
            }
        )
    return {"directions": directions, "pooled": found["pooled"]}


def verification(data: Path, faces: LfwFaces, x: np.ndarray) -> dict[str, Any]:
    """LFW View 2: ten-fold accuracy and TAR at FAR 1e-3 of unit embeddings ``x``."""
    pairs = read_pairs(data / "pairs.txt")
    index = {k: i for i, k in enumerate(faces.keys)}
    a = x[[index[p.a] for p in pairs]]
    b = x[[index[p.b] for p in pairs]]
    scores = (a * b).sum(axis=1).astype(np.float64)
    same = np.array([p.same for p in pairs])
    accs, _ = kfold_accuracy(scores, same, np.array([p.fold for p in pairs]))
    _, tar = threshold_at_far(scores, same, 1e-3)
    return {
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "tar_at_far_1e-3": tar,
    }


def committed(model_dir: str) -> dict[str, Any] | None:
    """The pooled figures of the committed ``fusion.json`` of ``model_dir``, if any."""
    path = ROOT / "perf" / "results" / "openset" / model_dir / "fusion.json"
    if not path.is_file():
        return None
    pooled: dict[str, Any] = json.loads(path.read_text())["pooled"]
    return pooled


def run_precision(
    precision: str,
    cache: Path,
    data: Path,
    predictor: Path,
    every: int,
    chips_of: dict[bytes, tuple[np.ndarray, np.ndarray, dict[str, Any]]],
) -> dict[str, Any]:
    """Both chip variants for the pipeline of ``precision`` (cached faces in ``cache``)."""
    pipeline = FacePipeline.local(PipelineConfig(model=MODEL, precision=precision))
    faces = load_or_embed(pipeline, data, cache, PAD, progress=True)
    card = pipeline.card
    sizes = [p.embedding_size for p in card.parts]
    facenet, dlib_mtcnn = split_embeddings(faces.embeddings, sizes, card.part_weights)
    key = faces.boxes.tobytes() + faces.found.tobytes()
    if key not in chips_of:  # the same detections: the chips are cut once
        chips_of[key] = shape_predictor_chips(data, faces, predictor)
    chips, rows, timing = chips_of[key]
    start = time.perf_counter()
    dlib_own = dlib_mtcnn.copy()
    dlib_own[rows] = embed_chips(dlib_embedder(pipeline), chips, pipeline.config.flip)
    embed_seconds = time.perf_counter() - start
    cos = (dlib_own[rows] * dlib_mtcnn[rows]).sum(axis=1)
    out: dict[str, Any] = {
        "precision": precision,
        "cache": str(cache),
        "images": len(faces),
        "faces_rechipped": len(rows),
        "no_face_kept": int(len(faces) - len(rows)),
        "chip_timing": timing,
        "embed_seconds": round(embed_seconds, 2),
        "control": control(pipeline, data, faces, dlib_mtcnn, every),
        "cosine_own_vs_mtcnn_chips": {
            "mean": float(cos.mean()),
            "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)),
        },
        "variants": {},
    }
    for name, dlib in (("mtcnn_template", dlib_mtcnn), ("dlib_shape_predictor", dlib_own)):
        fused = replace(faces, embeddings=fuse_embeddings([facenet, dlib], card.part_weights))
        start = time.perf_counter()
        found = choose_weight(fused, card)
        out["variants"][name] = {
            **summary(found),
            "choose_weight_seconds": round(time.perf_counter() - start, 1),
            "lfw_1to1": {
                "fused_card_weights": verification(data, faces, fused.embeddings),
                "dlib_part": verification(data, faces, dlib),
            },
        }
        p = out["variants"][name]["pooled"]["1000"]
        print(
            f"{precision} {name}: weights {[d['weight'] for d in found['directions']]}, "
            f"pooled G=1000 DIR@1e-3 {100 * p['0.001']['dir']:.2f} %, "
            f"DIR@1e-2 {100 * p['0.01']['dir']:.2f} %",
            flush=True,
        )
    was = committed(MODEL if precision == "int8" else f"{MODEL}-{precision}")
    if was is not None:
        now = out["variants"]["mtcnn_template"]["pooled"]
        out["reproduces_committed"] = all(
            abs(now[g][f]["dir"] - was[g][f]["dir"]) < 1e-9 for g in was for f in was[g]
        )
    return out


def main() -> None:
    parser = fused_lfw_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-fp32",
        type=Path,
        default=Path(tempfile.gettempdir()) / "facerec" / f"lfw-{MODEL}-fp32.npz",
        help="the fused FP32 LFW embeddings (bench lfw-openset --precision fp32's cache)",
    )
    parser.add_argument("--precision", nargs="+", default=["int8", "fp32"])
    parser.add_argument(
        "--predictor",
        type=Path,
        default=facerec_home() / "weights" / PREDICTOR_FILE,
        help="dlib's 5-point shape predictor (fetched by `facerec models`)",
    )
    parser.add_argument("--control-every", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    caches = {"int8": args.cache, "fp32": args.cache_fp32}
    chips_of: dict[bytes, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    runs = [
        run_precision(p, caches[p], args.data, args.predictor, args.control_every, chips_of)
        for p in args.precision
    ]
    doc = record(
        model=MODEL,
        predictor=args.predictor.name,
        chip={"size": CHIP_SIZE, "padding": CHIP_PADDING, "pad": PAD},
        protocol=(
            "facerec.evaluation.fusion_weight.choose_weight (bench lfw-openset --choose-weight): "
            "LFW open-set, merged names, halves of seed 0, centroid scoring, up to 3 enrolment "
            "images; normalisation and weight chosen on one half, thresholds from its "
            "strangers, DIR and FPIR on the other; pooled over both directions by searches. "
            "Only the dlib part's chips differ between the variants."
        ),
        runs=runs,
        wall_seconds=round(time.perf_counter() - start, 1),
    )
    write_json(args.out / "fusion_align.json", doc)
    for run in runs:
        ms = run["chip_timing"]["ms_per_face"]["shape_predictor"]
        print(f"{run['precision']}: shape predictor {ms['mean']:.3f} ms per face (mean)")
        for name, v in run["variants"].items():
            for g in GALLERIES:
                per = [d["report"][g] for d in v["directions"]]
                pooled = v["pooled"][g]
                line = "; ".join(
                    f"FPIR {f}: "
                    + " / ".join(f"{100 * d[f]['dir']:.1f}" for d in per)
                    + f", pooled {100 * pooled[f]['dir']:.2f} %"
                    for f in ("0.001", "0.01")
                )
                print(f"  {name} G={g}: {line}")
            acc = v["lfw_1to1"]["fused_card_weights"]["accuracy_mean"]
            print(f"  {name} LFW 1:1 fused accuracy {100 * acc:.2f} %")


if __name__ == "__main__":
    main()
