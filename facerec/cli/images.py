"""Commands on image files: detect, embed, verify, identify."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facerec.batch import FileResult, analyze_paths
from facerec.cli.output import emit, error_entry, fail
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.matching import Gallery, best_match
from facerec.pipeline import FacePipeline, ImageFaces

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def analyze_files(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    primary_only: bool,
    embed: bool,
    batch: int = 8,
    progress: bool = False,
) -> Iterator[FileResult]:
    """Decode and analyse ``paths`` a batch at a time; a bad file never stops the rest."""
    bar = tqdm(total=len(paths), unit="img", disable=not progress, leave=False)
    for lo in range(0, len(paths), batch):
        chunk = paths[lo : lo + batch]
        yield from analyze_paths(pipeline, chunk, primary_only=primary_only, embed=embed)
        bar.update(len(chunk))
    bar.close()


def _face_dicts(res: ImageFaces, with_embedding: bool) -> list[dict[str, Any]]:
    return [f.to_dict(with_embedding) for f in res.faces]


def _record_error(entries: list[Any], lines: list[str], path: Path, err: FaceRecError) -> None:
    """A per-file failure: an entry with the error for JSON, a line for people."""
    entries.append({"image": str(path), **error_entry(err)})
    lines.append(f"{path}: error [{err.code}] {err.message}")


def _require_face(o: FileResult) -> FaceRecError | None:
    if o.error is not None:
        return o.error
    if o.faces is None or not o.faces.faces:
        return NoFaceError(f"no face found in {o.path}", code="no_face")
    return None


def cmd_detect(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    entries: list[Any] = []
    lines: list[str] = []
    for o in analyze_files(pipeline, args.images, False, False, progress=args.progress):
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
    for o in analyze_files(pipeline, args.images, args.single, True, progress=args.progress):
        err = _require_face(o)
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
        err = _require_face(o)
        if err is not None:
            err.details.setdefault("image", str(o.path))
            return fail(err, args.json)
    a, b = (o.faces for o in outcomes)
    assert a is not None and b is not None
    ea, eb = a.faces[0].embedding, b.faces[0].embedding
    assert ea is not None and eb is not None
    similarity = float(np.dot(ea, eb))
    threshold = args.threshold if args.threshold is not None else pipeline.threshold
    match = similarity >= threshold
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


def gallery_images(root: Path) -> list[tuple[str, Path]]:
    if not root.is_dir():
        raise InvalidArgumentError(f"gallery {root} is not a directory", code="not_found")
    items = [
        (person.name, f)
        for person in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(person.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise InvalidArgumentError(
            f"gallery {root} holds no images; expected one sub-folder of images per person",
            code="empty_gallery",
        )
    return items


def cmd_identify(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    try:
        items = gallery_images(args.gallery)
    except FaceRecError as exc:
        return fail(exc, args.json)
    gallery = Gallery(pipeline.card.embedding_size)
    gallery_errors = []
    paths = [p for _, p in items]
    owner = dict((p, name) for name, p in items)
    for o in analyze_files(pipeline, paths, True, True, progress=args.progress):
        err = _require_face(o)
        if err is not None:
            gallery_errors.append({"image": str(o.path), **error_entry(err)})
            continue
        assert o.faces is not None and o.faces.faces[0].embedding is not None
        gallery.add(owner[o.path], o.faces.faces[0].embedding[None])
    if len(gallery) == 0:
        return fail(
            InvalidArgumentError("no gallery image had a usable face", code="empty_gallery"),
            args.json,
        )
    threshold = args.threshold if args.threshold is not None else pipeline.threshold
    entries: list[Any] = []
    lines: list[str] = []
    for o in analyze_files(pipeline, args.probes, False, True, progress=args.progress):
        err = _require_face(o)
        if err is not None:
            _record_error(entries, lines, o.path, err)
            continue
        assert o.faces is not None
        probes = np.stack([f.embedding for f in o.faces.faces if f.embedding is not None])
        faces = []
        for face, cands in zip(o.faces.faces, gallery.search(probes, args.top_k), strict=True):
            match = best_match(cands, threshold)
            faces.append(
                {
                    **face.to_dict(),
                    "candidates": [
                        {"subject": c.subject, "similarity": round(c.similarity, 6)} for c in cands
                    ],
                    "match": match,
                }
            )
            lines.append(
                f"{o.path}: face at [{', '.join(f'{v:.0f}' for v in face.box)}] -> "
                f"{match or 'unknown'} ({cands[0].similarity:.4f})"
            )
        entries.append({"image": str(o.path), "faces": faces})
    doc = {
        "threshold": threshold,
        "gallery": {"subjects": len(gallery), "images": len(items), "errors": gallery_errors},
        "images": entries,
    }
    emit(doc, args.json, "\n".join(lines))
    return 0
