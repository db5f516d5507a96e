"""Moving stored templates to the running model: ``facerec reembed``.

A template computed by another model (:mod:`gateway.model_ids`) is never compared. When
the enrolment image was kept (``FACEREC_STORE_IMAGES``, sealed in the face's row), the face
is detected again in it and embedded by the running model. The face chosen is the detected
face whose box overlaps the stored box most (intersection over union at least
:data:`MIN_BOX_IOU`); when none does, the face is left as it is and listed as needing
re-enrolment, like a face whose image was not kept.

Each face is moved on its own (:meth:`gateway.gallery.Gallery.replace_template`: the new
vector is indexed, then template and model change in one transaction), so a run stopped
anywhere leaves every face complete under the old model or the new one, and running it
again finishes the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from facerec.errors import FaceRecError
from facerec.imaging.decode import DecodeLimits, decode_image
from facerec.pipeline import FacePipeline
from facerec.video.tracker import iou_matrix
from gateway.gallery import Gallery
from gateway.scope import DEFAULT_SCOPE
from gateway.storage.model_migration import StoredFace

log = logging.getLogger(__name__)

MIN_BOX_IOU = 0.5  # a detected face this close to the stored box is the enrolled face


@dataclass
class ReembedReport:
    """What a run did (or, with ``dry_run``, would do); ids only, never images or
    embeddings."""

    model_id: str  # the running model, which the templates were moved to
    dry_run: bool
    considered: int = 0  # indexed faces of other models at the start
    reembedded: int = 0  # moved (with dry_run: would be tried, an image being kept)
    moved_meanwhile: int = 0  # another run moved them first
    gone: int = 0  # deleted meanwhile
    needs_reenrolment: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``considered=N reembedded=N ...`` (for the audit event)."""
        return (
            f"model={self.model_id} considered={self.considered} reembedded={self.reembedded} "
            f"moved_meanwhile={self.moved_meanwhile} gone={self.gone} "
            f"needs_reenrolment={len(self.needs_reenrolment)} errors={len(self.errors)}"
        )


def _entry(face: StoredFace, reason: str, **more: Any) -> dict[str, Any]:
    return {
        "face_id": face.id,
        "subject_id": face.subject_id,
        "model_id": face.model_id,
        "reason": reason,
        **more,
    }


def embed_stored(
    pipeline: FacePipeline, data: bytes, box: list[float], limits: DecodeLimits
) -> np.ndarray | None:
    """The running model's embedding float32[D] of the face at ``box`` (x1, y1, x2, y2)
    in the enrolment image ``data``: the detected face overlapping it most, if by at least
    :data:`MIN_BOX_IOU`; None when no detected face does."""
    image = decode_image(data, limits)
    (detections,) = pipeline.detect([image])
    if len(detections) == 0:
        return None
    overlap = iou_matrix(np.asarray(box, np.float64)[None, :], detections.boxes)[0]
    k = int(np.argmax(overlap))
    if overlap[k] < MIN_BOX_IOU:
        return None
    crop = pipeline.align(image, detections.take([k]))
    return np.asarray(pipeline.embed(crop)[0], np.float32)


def reembed(
    gallery: Gallery,
    pipeline: FacePipeline,
    limits: DecodeLimits,
    dry_run: bool = False,
    started: Callable[[int], None] | None = None,
    advance: Callable[[StoredFace, str], None] | None = None,
) -> ReembedReport:
    """Move every indexed face of another model than ``gallery.model_id`` (the running
    pipeline's) to it, from its kept enrolment image. ``started(n)`` is told how many
    faces will be looked at, ``advance(face, outcome)`` after each. A face that cannot be
    read or decoded is an error entry and the run goes on; an index or database failure
    stops it (a rerun continues)."""
    if pipeline.model_id != gallery.model_id:
        raise ValueError(f"pipeline {pipeline.model_id} and index {gallery.model_id} differ")
    faces = gallery.model_migration.faces_not_of(gallery.model_id)
    scopes = gallery.subjects.scopes()
    report = ReembedReport(gallery.model_id, dry_run, considered=len(faces))
    if started is not None:
        started(len(faces))
    for face in faces:
        outcome = _one(gallery, pipeline, limits, face, scopes, dry_run, report)
        if advance is not None:
            advance(face, outcome)
    return report


def _one(
    gallery: Gallery,
    pipeline: FacePipeline,
    limits: DecodeLimits,
    face: StoredFace,
    scopes: dict[str, tuple[str, str]],
    dry_run: bool,
    report: ReembedReport,
) -> str:
    """Move one face; returns its outcome (recorded in ``report``)."""
    if not face.has_image:
        report.needs_reenrolment.append(_entry(face, "no_stored_image"))
        return "no_stored_image"
    if dry_run:
        report.reembedded += 1
        return "would_reembed"
    try:
        data = gallery.model_migration.stored_image(face.id)
        if data is None:
            report.gone += 1
            return "gone"
        embedding = embed_stored(pipeline, data, face.box, limits)
    except FaceRecError as exc:  # an image that no longer opens or decodes
        log.warning("face %s: %s", face.id, exc.message)
        report.errors.append(_entry(face, "error", code=exc.code, message=exc.message))
        return "error"
    if embedding is None:
        report.needs_reenrolment.append(_entry(face, "face_not_found"))
        return "face_not_found"
    scope = scopes.get(face.subject_id, DEFAULT_SCOPE)
    outcome = gallery.replace_template(face.id, face.subject_id, embedding, face.model_id, scope)
    if outcome == "replaced":
        report.reembedded += 1
    elif outcome == "gone":
        report.gone += 1
    else:
        report.moved_meanwhile += 1
    return outcome
