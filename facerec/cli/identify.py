"""``facerec identify --gallery DIR``: open-set 1:N against a folder of people.

The gallery goes through the same policy as the gateway's enrolment: the primary face of
each photo, the quality gates, and the consistency gate (photos of one person are taken
most typical first, so a stranger's photo in a person's folder is the one refused).
Refused photos are reported with their code. The threshold is the operating point for
the gallery's size at ``--fpir`` (model card), unless ``--threshold`` is given.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerec.cli.images import _record_error, _require_face, analyze_files, gallery_images
from facerec.cli.output import emit, error_entry, fail
from facerec.detection.types import Detections
from facerec.enrolment import enrol_in_order
from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.imaging.decode import read_image
from facerec.matching import DEFAULT_SCORING, SCORE_METHODS, Gallery, IdentificationPolicy, Scoring
from facerec.openset import DEFAULT_FPIR, FPIR_ENV, OperatingPoint
from facerec.pipeline import Face, FacePipeline
from facerec.selection import check_enrolment


def add_options(p: argparse.ArgumentParser) -> None:
    """The open-set options of ``identify``."""
    p.add_argument(
        "--fpir",
        type=float,
        default=None,
        help=f"target false positive identification rate (${FPIR_ENV}, else {DEFAULT_FPIR:g})",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="explicit cosine threshold (overrides --fpir)"
    )
    p.add_argument(
        "--score",
        choices=list(SCORE_METHODS),
        default=DEFAULT_SCORING.method,
        help=f"subject score over its photos ({DEFAULT_SCORING.method}: best on LFW)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="keep gallery photos that disagree with the person's other photos",
    )


def _gallery_face(
    pipeline: FacePipeline, path: Path, face: Face
) -> tuple[np.ndarray, tuple[int, int]]:
    """(aligned crop, image size) of ``face`` in ``path``, for the quality gates."""
    image = read_image(path)
    det = Detections(face.box[None], np.array([face.score], np.float32), face.landmarks[None])
    return pipeline.align(image, det)[0], (image.shape[0], image.shape[1])


def build_gallery(
    pipeline: FacePipeline,
    root: Path,
    scoring: Scoring,
    force: bool,
    progress: bool,
    processes: int | None = None,
) -> tuple[Gallery, int, list[dict[str, Any]]]:
    """(gallery, images seen, refused images with their errors) from ``root``; the photos
    are analysed as :func:`~facerec.cli.images.analyze_files` does (``processes``)."""
    items = gallery_images(root)
    owner = {p: name for name, p in items}
    faces: dict[str, list[tuple[Path, Face]]] = defaultdict(list)
    refused: list[dict[str, Any]] = []
    paths = [p for _, p in items]
    for o in analyze_files(pipeline, paths, True, True, progress=progress, processes=processes):
        err = _require_face(o)
        if err is not None:
            refused.append({"image": str(o.path), "subject": owner[o.path], **error_entry(err)})
            continue
        assert o.faces is not None
        faces[owner[o.path]].append((o.path, o.faces.faces[0]))
    gallery = Gallery(pipeline.card.embedding_size, scoring)
    for name, found in faces.items():
        embeddings = [f.embedding for _, f in found if f.embedding is not None]
        assert len(embeddings) == len(found)
        accepted: list[np.ndarray] = []  # in the order they were accepted

        def accept(i: int, templates: np.ndarray | None) -> None:
            path, face = found[i]  # noqa: B023 (called within this iteration only)
            crop, size = _gallery_face(pipeline, path, face)
            check_enrolment(face, size, crop, templates, force=force)
            accepted.append(embeddings[i])  # noqa: B023

        outcomes = enrol_in_order(embeddings, accept)
        for (path, _), outcome in zip(found, outcomes, strict=True):
            if isinstance(outcome, FaceRecError):
                refused.append({"image": str(path), "subject": name, **error_entry(outcome)})
        if accepted:
            gallery.add(name, np.stack(accepted))
    return gallery, len(items), sorted(refused, key=lambda r: r["image"])


@dataclass(frozen=True)
class GalleryAtPoint:
    """A gallery folder enrolled through the policy, and the operating point for its size."""

    gallery: Gallery
    policy: IdentificationPolicy
    point: OperatingPoint
    seen: int  # photos found in the folder
    refused: list[dict[str, Any]]  # photos refused, each with its error


def open_gallery(
    pipeline: FacePipeline,
    root: Path,
    scoring: Scoring = DEFAULT_SCORING,
    fpir: float | None = None,
    threshold: float | None = None,
    force: bool = False,
    progress: bool = False,
    processes: int | None = None,
) -> GalleryAtPoint:
    """Enrol the folder ``root`` (see :func:`build_gallery`) and fix the operating point
    for its size: ``threshold`` if given, else the card's threshold for ``fpir`` (else
    ``$FACEREC_IDENTIFY_FPIR``, else 1e-3). ``identify`` and ``watch`` both use it."""
    cfg = pipeline.config
    policy = IdentificationPolicy.from_card(
        pipeline.card, cfg.alignment, cfg.flip, cfg.precision, scoring
    )
    policy.operating_point(1, fpir, threshold)  # a bad setting fails before any work
    gallery, seen, refused = build_gallery(pipeline, root, scoring, force, progress, processes)
    if len(gallery) == 0:
        raise InvalidArgumentError(
            "no gallery image had a usable face", code="empty_gallery", refused=refused
        )
    point = policy.operating_point(len(gallery), fpir, threshold)
    return GalleryAtPoint(gallery, policy, point, seen, refused)


def cmd_identify(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    try:
        enrolled = open_gallery(
            pipeline,
            args.gallery,
            Scoring.parse(args.score),
            args.fpir,
            args.threshold,
            args.force,
            args.progress,
            args.processes,
        )
    except FaceRecError as exc:
        return fail(exc, args.json)
    gallery, policy, point = enrolled.gallery, enrolled.policy, enrolled.point
    seen, refused = enrolled.seen, enrolled.refused
    entries: list[Any] = []
    lines = [
        f"gallery: {len(gallery)} people from {seen - len(refused)} of {seen} photos; "
        f"threshold {point.threshold:.4f} ({point.source}"
        + (f", FPIR {point.fpir:g}" if point.fpir is not None else "")
        + f", {point.method} scoring)"
    ]
    lines += [f"gallery photo refused: {r['image']} [{r['error']['code']}]" for r in refused]
    for o in analyze_files(
        pipeline, args.probes, False, True, progress=args.progress, processes=args.processes
    ):
        err = _require_face(o)
        if err is not None:
            _record_error(entries, lines, o.path, err)
            continue
        assert o.faces is not None
        probes = np.stack([f.embedding for f in o.faces.faces if f.embedding is not None])
        faces = []
        decisions = [policy.decide(c, point) for c in gallery.search(probes, args.top_k)]
        for face, decision in zip(o.faces.faces, decisions, strict=True):
            match = decision.match.subject_id if decision.match else None
            faces.append(
                {
                    **face.to_dict(),
                    "candidates": [c.to_dict() for c in decision.candidates],
                    "match": match,
                }
            )
            best = decision.candidates[0].similarity if decision.candidates else float("nan")
            lines.append(
                f"{o.path}: face at [{', '.join(f'{v:.0f}' for v in face.box)}] -> "
                f"{match or 'unknown'} ({best:.4f})"
            )
        entries.append({"image": str(o.path), "faces": faces})
    doc = {
        **point.to_dict(),
        "gallery": {"subjects": len(gallery), "images": seen, "errors": refused},
        "images": entries,
    }
    emit(doc, args.json, "\n".join(lines))
    return 0
