"""``facerec bench dataset``: run :mod:`facerec.evaluation.dataset` end to end on a folder,
time the pipeline's stages, and write ``report.json``, ``report.md`` and the plots."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from facerec.batch import worker_processes
from facerec.enrolment import Enrolled, Refusal, enrol_photos
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.evaluation.dataset import (
    DatasetFaces,
    DatasetFiles,
    Pairs,
    Searches,
    dataset_files,
    det_points,
    identification,
    sample_pairs,
    search,
    split,
    verification,
)
from facerec.evaluation.measure import machine, percentiles
from facerec.evaluation.metrics import Roc
from facerec.evaluation.plots import figure
from facerec.imaging.decode import read_image
from facerec.matching import DEFAULT_SCORING, Gallery, IdentificationPolicy
from facerec.openset import OperatingPoint
from facerec.pipeline import FacePipeline
from facerec.runtime import default_threads
from facerec.selection import EnrolmentRefusedError

STAGES = ("decode", "detect", "align", "embed", "match")


def failures(enrolled: Enrolled) -> dict[str, Any]:
    """The photos not measured, by reason: ``unreadable`` (not an image the decoder
    takes), ``no_face``, ``refused`` (an enrolment gate), each with its files."""
    groups: dict[str, list[Refusal]] = defaultdict(list)
    for r in enrolled.refused:
        if isinstance(r.error, NoFaceError):
            groups["no_face"].append(r)
        elif isinstance(r.error, EnrolmentRefusedError):
            groups["refused"].append(r)
        else:
            groups["unreadable"].append(r)
    out: dict[str, Any] = {}
    for reason in ("unreadable", "no_face", "refused"):
        found = groups[reason]
        by_code: dict[str, int] = defaultdict(int)
        for r in found:
            by_code[r.error.code] += 1
        out[reason] = {
            "count": len(found),
            "by_code": dict(sorted(by_code.items())),
            "files": [
                {"file": str(r.image), "code": r.error.code, "message": r.error.message}
                for r in found
            ],
        }
    return out


def dataset_section(files: DatasetFiles, enrolled: Enrolled, faces: DatasetFaces) -> dict[str, Any]:
    seen: dict[str, int] = defaultdict(int)
    for name, _ in files.items:
        seen[name] += 1
    return {
        "dir": str(files.root),
        "identities": len(files.identities),
        "images": len(files.items),
        "faces_used": len(faces.paths),
        "identities_used": len(faces.names),
        "failures": failures(enrolled),
        "ignored_files": [str(p) for p in files.ignored],
        "per_identity": {
            name: {"images": seen[name], "faces_used": len(enrolled.accepted.get(name, []))}
            for name in files.identities
        },
        "faces_rule": "the primary face (largest, most central) of each photo, enrolled "
        "person by person through the service's enrolment gates",
    }


def latency(
    pipeline: FacePipeline,
    faces: DatasetFaces,
    gallery: Gallery,
    policy: IdentificationPolicy | None,
    point: OperatingPoint | None,
    images: int,
) -> dict[str, Any]:
    """Per-stage milliseconds of single images through this process's pipeline, as one
    ``facerec identify`` probe goes: decode, detect, align, embed, then the gallery
    search and decision."""
    paths = faces.paths[:: max(1, len(faces.paths) // max(1, images))][:images]
    seconds: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    for path in paths:
        start = time.perf_counter()
        before = dict(pipeline.timer.seconds)
        with pipeline.timer.stage("decode"):
            image = read_image(path)
        found = pipeline.analyze([image], primary_only=True)[0]
        for stage in ("decode", "detect", "align", "embed"):
            seconds[stage].append(pipeline.timer.seconds.get(stage, 0.0) - before.get(stage, 0.0))
        if found.faces and found.faces[0].embedding is not None and policy and point:
            t = time.perf_counter()
            candidates = gallery.search(found.faces[0].embedding[None], 5)[0]
            policy.decide(candidates, point)
            seconds["match"].append(time.perf_counter() - t)
        seconds["total"].append(time.perf_counter() - start)
    return {
        "stages": {k: percentiles(v, ("p50", "p95", "count")) for k, v in seconds.items()},
        "images": len(paths),
        "how": "one image at a time in this process, as `facerec identify` runs one probe",
    }


def run_dataset(
    pipeline: FacePipeline,
    root: Path,
    out: Path,
    max_pairs: int = 100_000,
    k: int = 3,
    seed: int = 0,
    latency_images: int = 50,
    fpir: float | None = None,
    progress: bool = False,
    processes: int | None = None,
) -> tuple[dict[str, Any], DatasetFaces, Pairs]:
    """Measure ``root``; write the plots to ``out``; return the report (and the faces
    and pairs measured, for ``--update-card``). ``fpir``: the operating point's target,
    as ``facerec identify --fpir`` (None: ``$FACEREC_IDENTIFY_FPIR``, else 1e-3)."""
    bad = [
        f"{option} must be >= {low}"
        for option, value, low in (
            ("--max-pairs", max_pairs, 1),
            ("--gallery-images", k, 1),
            ("--latency-images", latency_images, 0),
        )
        if value < low
    ]
    if bad:
        raise InvalidArgumentError("; ".join(bad))
    files = dataset_files(root)
    workers = worker_processes(pipeline, len(files.items), processes)
    enrolled = enrol_photos(pipeline, files.items, progress=progress, processes=processes)
    used = sorted(n for n, found in enrolled.accepted.items() if found)
    if len(used) < 2:
        raise InvalidArgumentError(
            f"only {len(used)} person has a usable photo; measuring needs two "
            f"({len(enrolled.refused)} photos failed)",
            code="too_few_identities",
            failures=[r.to_dict() for r in enrolled.refused[:100]],
        )
    faces = DatasetFaces.of(enrolled, pipeline.card.embedding_size)
    pairs = sample_pairs(faces, max_pairs, seed)
    ver, roc = verification(pairs, pipeline.threshold, seed)
    s = split(faces, k, DEFAULT_SCORING, seed)
    found = search(faces, s)
    cfg = pipeline.config
    policy: IdentificationPolicy | None = None
    point: OperatingPoint | None = None
    try:
        policy = IdentificationPolicy.from_card(
            pipeline.card, cfg.alignment, cfg.flip, cfg.precision, DEFAULT_SCORING
        )
        point = policy.operating_point(len(s.gallery), fpir)
    except FaceRecError:
        pass  # no identification thresholds in the card: the report says so
    ident = identification(faces, found, s, point, k)
    report: dict[str, Any] = {
        "dataset": dataset_section(files, enrolled, faces),
        "verification": ver,
        "identification": ident,
        "latency_ms": latency(pipeline, faces, s.gallery, policy, point, latency_images),
        "images_per_second": len(files.items) / max(enrolled.analysis_seconds, 1e-9),
        "throughput": {
            "images": len(files.items),
            "seconds": enrolled.analysis_seconds,
            "processes": workers,
            "how": "every file decoded, detected, aligned and embedded as `facerec embed` "
            "does (worker processes, one per core, from 32 files on)",
        },
        "machine": machine(
            usable_cores=default_threads(),
            backend="onnxruntime (in process)" if pipeline.in_process else "triton",
        ),
        "settings": {
            "model": pipeline.card.name,
            "precision": cfg.precision,
            "alignment": cfg.alignment,
            "flip": cfg.flip,
            "detector": asdict(cfg.detector),
            "max_pairs": max_pairs,
            "gallery_images": k,
            "seed": seed,
        },
        "plots": {"roc": "roc.png", "scores": "scores.png", "det": "det.png"},
    }
    out.mkdir(parents=True, exist_ok=True)
    plot_roc(roc, ver, out / "roc.png")
    plot_scores(pairs, ver["threshold"], out / "scores.png")
    plot_det(found, point, out / "det.png")
    return report, faces, pairs


def plot_roc(roc: Roc, ver: dict[str, Any], path: Path) -> None:
    with figure(path, figsize=(6, 4.5), dpi=120) as (_, ax):
        ax.plot(np.maximum(roc.fpr, 1e-6), roc.tpr, label=f"AUC {roc.auc:.4f}")
        ax.plot([ver["eer"]], [1 - ver["eer"]], "o", label=f"EER {100 * ver['eer']:.2f} %")
        ax.set_xscale("log")
        ax.set_xlim(max(1e-4, 0.5 / max(ver["impostor_pairs"], 1)), 1)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"1:1 ROC ({ver['genuine_pairs']:,} + {ver['impostor_pairs']:,} pairs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")


def plot_scores(pairs: Pairs, threshold: float, path: Path) -> None:
    with figure(path, figsize=(6, 4.5), dpi=120) as (_, ax):
        bins = np.linspace(-1, 1, 101)
        ax.hist(pairs.scores[pairs.same], bins, alpha=0.6, density=True, label="same person")
        ax.hist(pairs.scores[~pairs.same], bins, alpha=0.6, density=True, label="different")
        ax.axvline(threshold, color="k", ls="--", label=f"card threshold {threshold:.3f}")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.set_title("1:1 score distributions")
        ax.legend()


def plot_det(found: Searches, point: OperatingPoint | None, path: Path) -> None:
    with figure(path, figsize=(6, 4.5), dpi=120) as (_, ax):
        fpir, fnir = det_points(found, np.linspace(-1, 1, 401))
        if len(fpir):
            ax.plot(np.maximum(fpir, 1e-4), np.maximum(fnir, 1e-4), label=f"G={found.gallery_size}")
        if point is not None and found.mated is not None:
            nm, m, g = found.nonmated, found.mated, found.gallery_size
            ax.plot(
                [max(nm.fpir(point.threshold, g), 1e-4)],
                [max(1 - m.dir(point.threshold, g), 1e-4)],
                "o",
                label=f"identify's threshold (FPIR {point.fpir:g})",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FPIR (strangers matched)")
        ax.set_ylabel("FNIR (enrolled people missed)")
        ax.set_title("open-set identification (DET)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left")
