"""Enrolling a set of photos of one person: the one loop the command line's folder
galleries, the gateway's ``POST /v1/subjects/{id}/faces`` and every other enrolment run;
and the gallery folder (one sub-folder of photos per person) that ``identify``, ``watch``
and the benchmarks enrol with it.

The photos are taken most typical first (:func:`facerec.selection.consensus_order`), and
each must pass its checks against the templates accepted before it (those the person
already had, then this set's): one photo of someone else among several meets the
majority's templates and is the one refused, whatever the order it came in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from facerec.batch import analyze_files, require_face
from facerec.detection.types import Detections
from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.imaging.decode import IMAGE_SUFFIXES, read_image
from facerec.matching import DEFAULT_SCORING, Gallery, IdentificationPolicy, Scoring
from facerec.openset import OperatingPoint
from facerec.pipeline import Face, FacePipeline
from facerec.selection import check_enrolment, consensus_order

R = TypeVar("R")


def enrol_in_order(
    embeddings: Sequence[np.ndarray],
    accept: Callable[[int, np.ndarray | None], R],
    existing: Sequence[np.ndarray] = (),
) -> list[R | FaceRecError]:
    """Each photo's outcome, in the order given: ``accept(i, templates)`` (the checks
    against ``templates``, float32[N, D] of the faces accepted so far, None when there
    are none; whatever storing the photo means) or the :class:`FaceRecError` it raised.
    A refused photo adds no template; ``existing`` are the person's templates before."""
    accepted = list(existing)
    results: dict[int, R | FaceRecError] = {}
    order = consensus_order(np.stack(embeddings)) if len(embeddings) else []
    for i in order:
        templates = np.stack(accepted) if accepted else None
        try:
            results[i] = accept(i, templates)
        except FaceRecError as exc:
            results[i] = exc
            continue
        accepted.append(embeddings[i])
    return [results[i] for i in range(len(embeddings))]


# -- a gallery folder: one sub-folder of photos per person ---------------------------
def gallery_images(root: Path) -> list[tuple[str, Path]]:
    """(person, photo) for every image of a gallery folder: one sub-folder per person."""
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


def aligned_crop(pipeline: FacePipeline, image: np.ndarray, face: Face) -> np.ndarray:
    """The aligned crop of ``face`` found in ``image``, for the blur gate."""
    det = Detections(face.box[None], np.array([face.score], np.float32), face.landmarks[None])
    crop: np.ndarray = pipeline.align(image, det)[0]
    return crop


def gallery_face(
    pipeline: FacePipeline, path: Path, face: Face
) -> tuple[np.ndarray, tuple[int, int]]:
    """(aligned crop, image size) of ``face`` in ``path``, for the quality gates."""
    image = read_image(path)
    return aligned_crop(pipeline, image, face), (image.shape[0], image.shape[1])


@dataclass(frozen=True)
class Refusal:
    """A photo that gave no template: unreadable, without a face, or refused by a gate."""

    image: Path
    subject: str
    error: FaceRecError

    def to_dict(self) -> dict[str, Any]:
        return {"image": str(self.image), "subject": self.subject, "error": self.error.to_dict()}


@dataclass
class Enrolled:
    """What :func:`enrol_photos` made of a list of (person, photo): per person the photos
    accepted (in file order) with their face, the refusals, and the seconds the photos'
    analysis (decode, detect, align, embed) took."""

    accepted: dict[str, list[tuple[Path, Face]]]
    refused: list[Refusal]
    analysis_seconds: float

    def gallery(self, embedding_size: int, scoring: Scoring) -> Gallery:
        """A gallery of every person with an accepted photo."""
        gallery = Gallery(embedding_size, scoring)
        for name, found in self.accepted.items():
            if found:
                gallery.add(
                    name, np.stack([f.embedding for _, f in found if f.embedding is not None])
                )
        return gallery


def enrol_photos(
    pipeline: FacePipeline,
    items: Sequence[tuple[str, Path]],
    force: bool = False,
    progress: bool = False,
    processes: int | None = None,
) -> Enrolled:
    """Analyse every photo of ``items`` (person, photo) as :func:`~facerec.batch.analyze_files`
    does (``processes``), take its primary face, and enrol each person's faces through
    :func:`enrol_in_order` with every enrolment gate (``force``: all but consistency)."""
    owner = {p: name for name, p in items}
    faces: dict[str, list[tuple[Path, Face]]] = defaultdict(list)
    refused: list[Refusal] = []
    paths = [p for _, p in items]
    start = time.perf_counter()
    for o in analyze_files(pipeline, paths, True, True, progress=progress, processes=processes):
        err = require_face(o)
        if err is not None:
            refused.append(Refusal(o.path, owner[o.path], err))
            continue
        assert o.faces is not None
        faces[owner[o.path]].append((o.path, o.faces.faces[0]))
    seconds = time.perf_counter() - start
    accepted: dict[str, list[tuple[Path, Face]]] = {}
    for name, found in faces.items():
        embeddings = [f.embedding for _, f in found if f.embedding is not None]
        assert len(embeddings) == len(found)

        def accept(i: int, templates: np.ndarray | None) -> None:
            path, face = found[i]  # noqa: B023 (called within this iteration only)
            crop, size = gallery_face(pipeline, path, face)
            check_enrolment(face, size, crop, templates, force=force)

        outcomes = enrol_in_order(embeddings, accept)
        accepted[name] = []
        for photo, outcome in zip(found, outcomes, strict=True):
            if isinstance(outcome, FaceRecError):
                refused.append(Refusal(photo[0], name, outcome))
            else:
                accepted[name].append(photo)
    return Enrolled(accepted, sorted(refused, key=lambda r: str(r.image)), seconds)


def build_gallery(
    pipeline: FacePipeline,
    root: Path,
    scoring: Scoring,
    force: bool,
    progress: bool,
    processes: int | None = None,
) -> tuple[Gallery, int, list[dict[str, Any]]]:
    """(gallery, images seen, refused images with their errors) from the gallery folder
    ``root`` (:func:`gallery_images`), enrolled by :func:`enrol_photos`."""
    items = gallery_images(root)
    enrolled = enrol_photos(pipeline, items, force, progress, processes)
    gallery = enrolled.gallery(pipeline.card.embedding_size, scoring)
    return gallery, len(items), [r.to_dict() for r in enrolled.refused]


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


__all__ = [
    "Enrolled",
    "GalleryAtPoint",
    "Refusal",
    "aligned_crop",
    "build_gallery",
    "enrol_in_order",
    "enrol_photos",
    "gallery_images",
    "open_gallery",
]
