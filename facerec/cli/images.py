"""Commands on image files: detect, embed, verify (identify: :mod:`facerec.cli.identify`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from facerec.batch import PROCESS_MIN_FILES, analyze_files, require_face
from facerec.cli.output import emit, error_entry, fail
from facerec.errors import FaceRecError
from facerec.matching import verified
from facerec.pipeline import FacePipeline, ImageFaces


def add_processes_option(p: argparse.ArgumentParser) -> None:
    """``--processes`` for commands over many files."""
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help=f"worker processes (default: one per core from {PROCESS_MIN_FILES} files on; "
        "1 = all in this process)",
    )


def _face_dicts(res: ImageFaces, with_embedding: bool) -> list[dict[str, Any]]:
    return [f.to_dict(with_embedding) for f in res.faces]


def _record_error(entries: list[Any], lines: list[str], path: Path, err: FaceRecError) -> None:
    """A per-file failure: an entry with the error for JSON, a line for people."""
    entries.append({"image": str(path), **error_entry(err)})
    lines.append(f"{path}: error [{err.code}] {err.message}")


def cmd_detect(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    entries: list[Any] = []
    lines: list[str] = []
    for o in analyze_files(
        pipeline, args.images, False, False, progress=args.progress, processes=args.processes
    ):
        if o.error is not None:
            _record_error(entries, lines, o.path, o.error)
            continue
        assert o.faces is not None
        entries.append({"image": str(o.path), "faces": _face_dicts(o.faces, False)})
        boxes = "; ".join(
            f"[{', '.join(f'{v:.0f}' for v in f.box)}] {f.score:.3f}" for f in o.faces.faces
        )
        lines.append(f"{o.path}: {len(o.faces.faces)} face(s) {boxes}")
    emit({"images": entries}, args.json, "\n".join(lines))
    return 0


def cmd_embed(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    entries: list[Any] = []
    lines: list[str] = []
    for o in analyze_files(
        pipeline, args.images, args.single, True, progress=args.progress, processes=args.processes
    ):
        err = require_face(o)
        if err is not None:
            _record_error(entries, lines, o.path, err)
            continue
        assert o.faces is not None
        entry: dict[str, Any] = {"image": str(o.path), "faces": _face_dicts(o.faces, True)}
        if args.single:
            entry["faces_detected"] = o.faces.detected
            if o.faces.detected > 1:
                entry["selection"] = "largest_most_central"
        entries.append(entry)
        lines.append(
            f"{o.path}: {len(o.faces.faces)} embedding(s) of {pipeline.card.embedding_size} d"
        )
    emit(
        {
            "model": pipeline.card.name,
            "model_id": pipeline.model_id,
            "embedding_size": pipeline.card.embedding_size,
            "images": entries,
        },
        args.json,
        "\n".join(lines),
    )
    return 0


def cmd_verify(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    outcomes = list(analyze_files(pipeline, [args.image_a, args.image_b], True, True))
    for o in outcomes:
        err = require_face(o)
        if err is not None:
            err.details.setdefault("image", str(o.path))
            return fail(err, args.json)
    a, b = (o.faces for o in outcomes)
    assert a is not None and b is not None
    ea, eb = a.faces[0].embedding, b.faces[0].embedding
    assert ea is not None and eb is not None
    similarity = float(np.dot(ea, eb))
    threshold = args.threshold if args.threshold is not None else pipeline.threshold
    match = verified(similarity, threshold)
    doc = {
        "match": match,
        "similarity": round(similarity, 6),
        "threshold": threshold,
        "threshold_source": "argument" if args.threshold is not None else "model_card",
        "images": [
            {
                "image": str(o.path),
                "face": o.faces.faces[0].to_dict(),
                "faces_detected": o.faces.detected,
                **({"selection": "largest_most_central"} if o.faces.detected > 1 else {}),
            }
            for o in outcomes
            if o.faces is not None
        ],
    }
    verdict = "same person" if match else "different people"
    emit(doc, args.json, f"{verdict}: similarity {similarity:.4f} (threshold {threshold:.4f})")
    return 0
