"""Commands on image files: detect, embed, verify (identify: :mod:`facerec.cli.identify`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facerec.batch import FileResult, ProcessBatchRunner, analyze_paths
from facerec.cli.output import emit, error_entry, fail
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.matching import verified
from facerec.pipeline import FacePipeline, ImageFaces
from facerec.runtime import default_threads

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


#: From this many files on, commands analyse them in worker processes, one per core. A
#: worker starts and loads its models in about a second, which a few dozen files repay;
#: threads in one process lose 10-35 % of their detection time to the interpreter lock.
PROCESS_MIN_FILES = 32


def worker_processes(
    pipeline: FacePipeline, files: int, requested: int | None = None, batch: int = 8
) -> int:
    """How many worker processes analyse ``files`` files: ``requested`` when given, else
    one per core from :data:`PROCESS_MIN_FILES` files on; never more than there are
    batches of ``batch`` files (a worker without one would only load the models). 1 means
    in this process, which is also the answer for a remote backend (Triton does the work
    there)."""
    if not pipeline.in_process:
        return 1
    wanted = default_threads() if files >= PROCESS_MIN_FILES else 1
    if requested is not None:
        wanted = requested
    return max(1, min(wanted, -(-files // batch)))


def analyze_files(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    primary_only: bool,
    embed: bool,
    batch: int = 8,
    progress: bool = False,
    processes: int | None = None,
) -> Iterator[FileResult]:
    """Decode and analyse ``paths`` a batch at a time, in input order; a bad file never
    stops the rest. Many files go to worker processes (:func:`worker_processes`)."""
    bar = tqdm(total=len(paths), unit="img", disable=not progress, leave=False)
    workers = worker_processes(pipeline, len(paths), processes, batch)
    if workers > 1:
        with ProcessBatchRunner(pipeline.config, workers) as runner:
            for result in runner.run(paths, primary_only=primary_only, embed=embed, chunk=batch):
                bar.update(1)
                yield result
    else:
        for lo in range(0, len(paths), batch):
            chunk = paths[lo : lo + batch]
            yield from analyze_paths(pipeline, chunk, primary_only=primary_only, embed=embed)
            bar.update(len(chunk))
    bar.close()


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


def _require_face(o: FileResult) -> FaceRecError | None:
    if o.error is not None:
        return o.error
    if o.faces is None or not o.faces.faces:
        return NoFaceError(f"no face found in {o.path}", code="no_face")
    return None


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
