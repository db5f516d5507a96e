"""``facerec identify --gallery DIR``: open-set 1:N against a folder of people.

The gallery goes through the same policy as the gateway's enrolment: the primary face of
each photo, the quality gates, and the consistency gate (photos of one person are taken
most typical first, so a stranger's photo in a person's folder is the one refused).
Refused photos are reported with their code. The threshold is the operating point for
the gallery's size at ``--fpir`` (model card), unless ``--threshold`` is given.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from facerec.batch import analyze_files, require_face
from facerec.cli.images import _record_error
from facerec.cli.output import emit, fail
from facerec.enrolment import open_gallery
from facerec.errors import FaceRecError
from facerec.matching import DEFAULT_SCORING, SCORE_METHODS, Scoring
from facerec.openset import DEFAULT_FPIR, FPIR_ENV
from facerec.pipeline import FacePipeline


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
        err = require_face(o)
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
