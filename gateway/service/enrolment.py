"""Enrolment through the core's policy (:mod:`facerec.selection`): which face of an upload
becomes a template, the gates it must pass, and :class:`EnrolmentService`, which adds the
faces of a request to a subject (and deletes one).

- :func:`choose_face`: ``only`` (refuse several), ``primary`` (:func:`primary_face`: the
  largest, most central face, never simply the detector's most confident one) or an index
  as listed by ``/v1/detect``.
- :func:`enrolment_quality`: the per-face ``quality`` a subject's faces and ``/v1/detect``
  report, a summary in [0, 1] (detection score, scaled down for faces under
  :data:`QUALITY_SIDE` px); the gates decide, this only ranks photos.
- The gates themselves are :func:`facerec.selection.check_enrolment`, each refusal its own
  code (:data:`REFUSAL_CODES`).
- The set of faces of one request is taken most typical first, each checked against those
  accepted before it (:func:`facerec.enrolment.enrol_in_order`, the core's one loop); what
  enrolling one changes in the database and the index, and in which order, is
  :class:`~gateway.gallery.Gallery`'s business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facerec.detection.types import Detections
from facerec.enrolment import enrol_in_order
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.pipeline import Face
from facerec.selection import (
    DEFAULT_GATES,
    BlurryFaceError,
    EnrolmentGates,
    ExtremePoseError,
    FaceCutOffError,
    FaceQuality,
    FaceTooSmallError,
    InconsistentFaceError,
    LowDetectionScoreError,
    check_enrolment,
    primary_face,
)
from gateway.gallery import Gallery
from gateway.scope import check_id
from gateway.service.analyzer import Analyzer
from gateway.service.matching import GallerySizes
from gateway.service.models import ModelCensus
from gateway.service.subjects import SubjectService
from gateway.service.types import Audit, Caller, Enrolled, Enrolment, FailedImage, Subject, Upload
from gateway.storage.faces import FaceRepository

QUALITY_SIDE = 80.0  # faces this many pixels across (short side) or more lose nothing

REFUSAL_CODES = tuple(
    e.code
    for e in (
        FaceTooSmallError,
        LowDetectionScoreError,
        FaceCutOffError,
        BlurryFaceError,
        ExtremePoseError,
        InconsistentFaceError,
    )
)


class MultipleFacesError(FaceRecError):
    """An enrolment image shows several faces and none was chosen."""

    code = "multiple_faces"
    http_status = 422


def choose_face(detections: Detections, height: int, width: int, choice: str) -> int:
    """Index in ``detections`` (of an image ``height`` x ``width``) of the face to enrol:
    ``only`` refuses several faces, ``primary`` takes :func:`primary_face`, a number takes
    that face in detection order (as ``/v1/detect`` lists them)."""
    if len(detections) == 0:
        raise NoFaceError("no face found in the image")
    if choice == "only":
        if len(detections) > 1:
            raise MultipleFacesError(
                f"{len(detections)} faces in the image: choose one with face=primary or "
                "face=<index> (indices as returned by /v1/detect)",
                faces=[face_at(detections, k).to_dict() for k in range(len(detections))],
            )
        return 0
    if choice == "primary":
        return primary_face(detections, height, width)
    if choice.isdigit() and int(choice) < len(detections):
        return int(choice)
    raise InvalidArgumentError(
        f"face must be 'only', 'primary' or an index below {len(detections)}",
        code="invalid_face_choice",
    )


def face_at(detections: Detections, k: int, embedding: np.ndarray | None = None) -> Face:
    """Detection ``k`` as a :class:`Face` (with ``embedding`` float32[D] if given)."""
    return Face(
        detections.boxes[k], float(detections.scores[k]), detections.landmarks[k], embedding
    )


def enrolment_quality(quality: FaceQuality) -> float:
    """Detection score times min(1, short side / :data:`QUALITY_SIDE`): in [0, 1]."""
    return round(quality.score * min(1.0, quality.face_size / QUALITY_SIDE), 4)


def face_quality(face: Face) -> float:
    """:func:`enrolment_quality` of a detected face."""
    side = float(min(face.box[2] - face.box[0], face.box[3] - face.box[1]))
    return round(float(face.score) * min(1.0, side / QUALITY_SIDE), 4)


@dataclass(frozen=True)
class Prepared:
    """An upload's chosen face, embedded and past the quality gates; the consistency gate
    (which needs the subject's other templates) is still to come."""

    face: Face  # with its embedding
    crop: np.ndarray  # uint8[S, S, 3] aligned
    image_size: tuple[int, int]  # (height, width)
    digest: str  # sha256 of the upload

    @property
    def embedding(self) -> np.ndarray:
        """float32[D], unit."""
        assert self.face.embedding is not None
        return self.face.embedding


class EnrolmentService:
    """Adding faces to a subject the caller may see, and deleting one."""

    def __init__(
        self,
        subjects: SubjectService,
        faces: FaceRepository,
        gallery: Gallery,
        analyzer: Analyzer,
        audit: Audit,
        sizes: GallerySizes,
        census: ModelCensus,
        gates: EnrolmentGates = DEFAULT_GATES,
        store_images: bool = False,
    ) -> None:
        self.subjects, self.faces, self.gallery = subjects, faces, gallery
        self.analyzer, self.audit = analyzer, audit
        self.sizes, self.census = sizes, census  # told when the gallery changes
        self.gates, self.store_images = gates, store_images
        self.model_id = gallery.model_id  # the identity of the model templates are of

    def enrol(
        self,
        subject_id: str,
        uploads: Sequence[Upload],
        choice: str,
        caller: Caller,
        force: bool = False,
    ) -> Enrolment:
        """Add the chosen face of each upload to a subject the caller may see; one result
        (or error) per upload, in upload order. Every face passes the enrolment gates
        (:func:`facerec.selection.check_enrolment`), consistency against the subject's
        templates included unless ``force`` (then audited ``forced`` where it would have
        refused). The faces of one request are taken most typical first
        (:func:`facerec.selection.consensus_order`), so one wrong photo among several cannot
        turn the others away. When none was enrolled, the first error is raised (with
        every result attached)."""
        subject = self.subjects.get_subject(subject_id, caller)
        subject_id = subject.id
        if not uploads:
            raise InvalidArgumentError("no images uploaded", code="missing_image")
        prepared = self.analyzer.in_parallel(lambda u: self._prepare(u, choice), uploads)
        existing = self.faces.candidate_templates([subject_id], model_id=self.model_id).get(
            subject_id
        )
        had_faces = existing is not None and len(existing[1]) > 0
        ready = [i for i, p in enumerate(prepared) if isinstance(p, Prepared)]

        def accept(k: int, templates: np.ndarray | None) -> Enrolled:
            i = ready[k]
            found = prepared[i]
            assert isinstance(found, Prepared)
            try:
                enrolled = self._enrol_one(subject, uploads[i], found, templates, force)
            except FaceRecError:
                self.audit("enrol", "refused", caller, subject=subject_id)
                raise
            outcome = "forced" if enrolled.forced else "ok"
            self.audit("enrol", outcome, caller, subject=subject_id, score=enrolled.consistency)
            return enrolled

        embeddings = [p.embedding for p in prepared if isinstance(p, Prepared)]
        before = [] if existing is None else list(existing[1])
        outcomes = enrol_in_order(embeddings, accept, before)
        results: list[Enrolled | FailedImage | None] = [None] * len(uploads)
        for k, outcome in enumerate(outcomes):
            name = uploads[ready[k]].name
            results[ready[k]] = (
                FailedImage(name, outcome) if isinstance(outcome, FaceRecError) else outcome
            )
        for i, p in enumerate(prepared):  # refused before the set was taken in order
            if isinstance(p, FaceRecError):
                results[i] = FailedImage(uploads[i].name, p)
                self.audit("enrol", "refused", caller, subject=subject_id)
        done = [r for r in results if r is not None]
        self.census.changed()
        if not had_faces and any(isinstance(r, Enrolled) for r in done):
            self.sizes.changed(+1, subject.scope)
        failures = [r.error for r in done if isinstance(r, FailedImage)]
        if len(failures) == len(uploads):  # nothing enrolled: the request as a whole failed
            first = failures[0]
            error = FaceRecError(
                first.message if len(uploads) == 1 else f"no image was enrolled ({first.message})",
                code=first.code,
                results=[r.to_dict() for r in done],
            )
            error.http_status = first.http_status
            raise error
        return Enrolment(subject_id, done)

    def _prepare(self, upload: Upload, choice: str) -> Prepared | FaceRecError:
        """Decode one upload, choose its face, refuse it at the quality gates (before
        embedding), then embed it: everything that does not need the subject's templates."""
        batcher = self.analyzer.batcher
        try:
            with self.analyzer.decoded(upload.data) as image:
                detections = batcher.detect(image)
                height, width = image.shape[:2]
                k = choose_face(detections, height, width, choice)
                crop = self.analyzer.pipeline.align(image, detections.take([k]))
            face = face_at(detections, k)
            check_enrolment(face, (height, width), crop[0], None, self.gates)
            embedding = batcher.embed(crop)[0]
            digest = hashlib.sha256(upload.data).hexdigest()
            return Prepared(face_at(detections, k, embedding), crop[0], (height, width), digest)
        except FaceRecError as exc:
            return exc

    def _enrol_one(
        self,
        subject: Subject,
        upload: Upload,
        prepared: Prepared,
        templates: np.ndarray | None,
        force: bool,
    ) -> Enrolled:
        face = prepared.face
        quality = check_enrolment(
            face, prepared.image_size, prepared.crop, templates, self.gates, force
        )
        least, consistency = self.gates.min_consistency, quality.consistency
        forced = False  # enrolled only because force skipped the consistency gate
        if force and least is not None and consistency is not None:
            forced = consistency < least
        summary = enrolment_quality(quality)
        face_id = self.gallery.add_face(
            subject.id,
            prepared.embedding,
            prepared.digest,
            summary,
            face.box.tolist(),
            image=upload.data if self.store_images else None,
            scope=subject.scope,
        )
        return Enrolled(upload.name, face_id, summary, face, quality.to_dict(), forced)

    def delete_face(self, subject_id: str, face_id: str, caller: Caller) -> None:
        subject = self.subjects.get_subject(subject_id, caller)
        self.gallery.delete_face(subject.id, check_id(face_id, "face id"))
        last = not any(
            f.state == "indexed" and f.model_id == self.model_id
            for f in self.faces.faces(subject.id)
        )
        self.sizes.changed(-1 if last else 0, subject.scope)
        self.census.changed()
        self.audit("delete_face", "ok", caller, subject=subject_id)
