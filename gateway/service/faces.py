"""The face operations, independent of HTTP: subjects, enrolment, 1:1 and 1:N matching.

Every operation that touches biometric data writes an audit event. Inference goes through
the :class:`~facerec.batching.MicroBatcher`, so concurrent requests share pipeline calls.
What enrolment and deletion change in the database and the index, and in which order, is
:class:`~gateway.gallery.Gallery`'s business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np

from facerec.batching import MicroBatcher
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.imaging.budget import PixelBudget
from facerec.imaging.decode import DecodeLimits, decode_image, probe_image
from facerec.pipeline import Face, FacePipeline, ImageFaces
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.errors import ForbiddenError, NotFoundError
from gateway.gallery import Gallery
from gateway.index.milvus import check_id
from gateway.memory import release_memory
from gateway.service.names import clean_name
from gateway.service.types import (
    UNSET,
    Caller,
    Candidate,
    DetectedFace,
    Enrolled,
    Enrolment,
    FaceInfo,
    FailedImage,
    Identification,
    IdentifiedFace,
    PairVerification,
    Readiness,
    Subject,
    SubjectPage,
    Upload,
    Verification,
)
from gateway.storage.database import Database
from gateway.storage.schema import DEFAULT_GALLERY, DEFAULT_NAMESPACE

QUALITY_SIDE = 80.0  # faces this many pixels across (short side) or more lose nothing


class MultipleFacesError(FaceRecError):
    """An enrolment image shows several faces and none was chosen."""

    code = "multiple_faces"
    http_status = 422


def face_quality(face: Face) -> float:
    """Detection score, scaled down for faces smaller than ``QUALITY_SIDE`` px: in [0, 1]."""
    w, h = face.box[2] - face.box[0], face.box[3] - face.box[1]
    return round(float(face.score) * min(1.0, float(min(w, h)) / QUALITY_SIDE), 4)


def select_face(faces: ImageFaces, choice: str) -> int:
    """Which face an enrolment uses: ``only`` (refuse several), ``primary`` (the largest,
    most central: the pipeline's first when asked for the primary), or an index."""
    if not faces.faces:
        raise NoFaceError("no face found in the image")
    if choice == "only":
        if len(faces.faces) > 1:
            raise MultipleFacesError(
                f"{len(faces.faces)} faces in the image: choose one with face=primary or "
                "face=<index> (indices as returned by /v1/detect)",
                faces=[f.to_dict() for f in faces.faces],
            )
        return 0
    if choice == "primary":
        return 0
    if choice.isdigit() and int(choice) < len(faces.faces):
        return int(choice)
    raise InvalidArgumentError(
        f"face must be 'only', 'primary' or an index below {len(faces.faces)}",
        code="invalid_face_choice",
    )


class FaceService:
    """Subjects, enrolment, verification, identification, detection: what the REST API's
    face routes call."""

    def __init__(
        self,
        db: Database,
        gallery: Gallery,
        pipeline: FacePipeline,
        batcher: MicroBatcher,
        audit_log: AuditLog,
        limits: DecodeLimits,
        store_images: bool = False,
        min_quality: float = 0.5,
        budget: PixelBudget | None = None,
        trim_after_pixels: int = 0,
    ) -> None:
        self.db, self.gallery, self.pipeline, self.batcher = db, gallery, pipeline, batcher
        self.budget = budget or PixelBudget(10 * limits.max_pixels)
        self.trim_after_pixels = trim_after_pixels
        self.index = gallery.index
        self.audit_log = audit_log
        self.limits = limits
        self.store_images = store_images
        self.min_quality = min_quality
        self.threshold = pipeline.threshold
        self._fanout = ThreadPoolExecutor(8, thread_name_prefix="fanout")

    def close(self) -> None:
        self._fanout.shutdown(wait=True)
        self.batcher.close()
        self.gallery.close()

    # -- helpers --------------------------------------------------------------------------
    def audit(self, action: str, outcome: str, caller: Caller, **values: Any) -> AuditEvent:
        return self.audit_log.append(
            action=action, outcome=outcome, **caller.audit_fields(), **values
        )

    def readiness(self) -> Readiness:
        """Whether the database, the index and the models answer (never raises)."""
        checks: dict[str, str] = {}
        for name, ping in (("database", self.db.ping), ("index", self.index.ping)):
            try:
                ping()
                checks[name] = "ok"
            except Exception as exc:  # readiness reports, never raises
                checks[name] = f"error: {type(exc).__name__}"
        checks["models"] = "ok" if self.pipeline.ready() else "error: unavailable"
        return Readiness(checks)

    def _analyze(self, data: bytes, primary_only: bool = False) -> ImageFaces:
        """Decode and analyse one upload. The header is checked first (a file too short for
        its frame is ``truncated_image``); then the frame's pixels are reserved in the
        budget shared by every request in flight, from decoding until the analysis is
        done, so concurrent large images wait (or get 503 ``busy``) instead of adding up."""
        pixels = probe_image(data, self.limits).pixels
        try:
            with self.budget.reserve(pixels):
                return self.batcher.analyze(decode_image(data, self.limits), primary_only)
        finally:
            if self.trim_after_pixels and pixels >= self.trim_after_pixels:
                release_memory()

    def analyze_many(
        self, uploads: Sequence[Upload], primary_only: bool = False
    ) -> list[ImageFaces | FaceRecError]:
        """Decode and analyse several uploads at once; a bad one yields its error."""

        def one(upload: Upload) -> ImageFaces | FaceRecError:
            try:
                return self._analyze(upload.data, primary_only)
            except FaceRecError as exc:
                return exc

        return list(self._fanout.map(one, uploads))

    def _probe(self, data: bytes) -> Face:
        faces = self._analyze(data, primary_only=True)
        if not faces.faces:
            raise NoFaceError("no face found in the image")
        return faces.faces[0]

    def _threshold(self, threshold: float | None) -> float:
        if threshold is None:
            return self.threshold
        if not -1.0 <= threshold <= 1.0:
            raise InvalidArgumentError("threshold must be a cosine similarity in [-1, 1]")
        return threshold

    # -- subjects -------------------------------------------------------------------------
    def create_subject(
        self,
        name: str,
        meta: dict[str, Any] | None,
        expires_at: datetime | None,
        caller: Caller,
        gallery: str | None = None,
    ) -> Subject:
        """A new subject in the caller's namespace, in ``gallery`` (the key's own gallery
        when it has one; another one is refused)."""
        if caller.gallery is not None and gallery not in (None, caller.gallery):
            raise ForbiddenError(f"this key may only add subjects to gallery {caller.gallery!r}")
        chosen = check_id(gallery or caller.gallery or DEFAULT_GALLERY, "gallery")
        subject = self.db.subjects.create(
            clean_name(name), meta, expires_at, caller.namespace or DEFAULT_NAMESPACE, chosen
        )
        self.audit("create_subject", "ok", caller, subject=subject.id)
        return subject

    def get_subject(self, subject_id: str, caller: Caller) -> Subject:
        """A subject the caller may see; any other is 404, as if it did not exist."""
        subject = self.db.subjects.get(check_id(subject_id, "subject id"))
        if not caller.sees(subject):
            raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
        return subject

    def list_subjects(self, caller: Caller, offset: int = 0, limit: int = 50) -> SubjectPage:
        """One page of the subjects the caller may see, oldest first, and how many."""
        items, total = self.db.subjects.page(offset, limit, caller.namespace, caller.gallery)
        return SubjectPage(items, total)

    def faces(self, subject_id: str, caller: Caller) -> list[FaceInfo]:
        """The enrolled faces of a subject (those confirmed in the index), oldest first."""
        faces = self.db.subjects.faces(self.get_subject(subject_id, caller).id)
        return [f for f in faces if f.state == "indexed"]

    def update_subject(
        self,
        subject_id: str,
        caller: Caller,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        expires_at: datetime | None = UNSET,
    ) -> Subject:
        subject = self.db.subjects.update(
            self.get_subject(subject_id, caller).id,
            None if name is None else clean_name(name),
            meta,
            expires_at,
        )
        self.audit("update_subject", "ok", caller, subject=subject_id)
        return subject

    def delete_subject(
        self, subject_id: str, caller: Caller, action: str = "delete_subject"
    ) -> int:
        """Delete a subject, its faces and its data key; returns the faces removed."""
        removed = self.gallery.delete_subject(self.get_subject(subject_id, caller).id)
        self.audit(action, "ok", caller, subject=subject_id)
        return removed

    def purge_expired(self, caller: Caller) -> list[str]:
        """Delete every subject whose expiry has passed (each audited as ``expire``)."""
        purged = []
        for subject_id in self.db.subjects.expired():
            try:
                self.delete_subject(subject_id, caller, action="expire")
                purged.append(subject_id)
            except NotFoundError:
                pass  # deleted meanwhile
        return purged

    # -- enrolment ------------------------------------------------------------------------
    def enrol(
        self, subject_id: str, uploads: Sequence[Upload], choice: str, caller: Caller
    ) -> Enrolment:
        """Add the face of each upload to a subject; one result (or error) per upload.
        When none was enrolled, the first error is raised (with every result attached)."""
        subject = self.get_subject(subject_id, caller)
        if not uploads:
            raise InvalidArgumentError("no images uploaded", code="missing_image")
        analysed = self.analyze_many(uploads)
        results: list[Enrolled | FailedImage] = []
        failures: list[FaceRecError] = []
        for upload, found in zip(uploads, analysed, strict=True):
            try:
                if isinstance(found, FaceRecError):
                    raise found
                results.append(self._enrol_one(subject, upload, found, choice))
                self.audit("enrol", "ok", caller, subject=subject_id)
            except FaceRecError as exc:
                failures.append(exc)
                results.append(FailedImage(upload.name, exc))
                self.audit("enrol", "refused", caller, subject=subject_id)
        if len(failures) == len(uploads):  # nothing enrolled: the request as a whole failed
            first = failures[0]
            error = FaceRecError(
                first.message if len(uploads) == 1 else f"no image was enrolled ({first.message})",
                code=first.code,
                results=[r.to_dict() for r in results],
            )
            error.http_status = first.http_status
            raise error
        return Enrolment(subject_id, results)

    def _enrol_one(
        self, subject: Subject, upload: Upload, found: ImageFaces, choice: str
    ) -> Enrolled:
        face = found.faces[select_face(found, choice)]
        assert face.embedding is not None  # analysed with embeddings
        quality = face_quality(face)
        if quality < self.min_quality:
            raise InvalidArgumentError(
                f"face quality {quality} is below {self.min_quality} (too small or unsure)",
                code="low_quality",
                quality=quality,
            )
        digest = hashlib.sha256(upload.data).hexdigest()
        face_id = self.gallery.add_face(
            subject.id,
            face.embedding,
            digest,
            quality,
            face.box.tolist(),
            image=upload.data if self.store_images else None,
            scope=subject.scope,
        )
        return Enrolled(upload.name, face_id, quality, face)

    def delete_face(self, subject_id: str, face_id: str, caller: Caller) -> None:
        subject = self.get_subject(subject_id, caller)
        self.gallery.delete_face(subject.id, check_id(face_id, "face id"))
        self.audit("delete_face", "ok", caller, subject=subject_id)

    # -- matching ---------------------------------------------------------------------------
    def verify(
        self, data: bytes, subject_id: str, caller: Caller, threshold: float | None = None
    ) -> Verification:
        """1:1 against the subject's best-matching template."""
        limit = self._threshold(threshold)
        self.get_subject(subject_id, caller)
        templates = [v for _, _, v in self.db.subjects.templates(subject_id)]
        if not templates:
            raise NoFaceError(
                f"subject {subject_id} has no enrolled faces", code="subject_has_no_faces"
            )
        probe = self._probe(data)
        assert probe.embedding is not None
        similarity = float(np.max(np.stack(templates) @ probe.embedding))
        match = similarity >= limit
        self.audit(
            "verify",
            "match" if match else "no_match",
            caller,
            subject=subject_id,
            score=similarity,
            threshold=limit,
        )
        return Verification(match, round(similarity, 6), limit, subject_id, probe)

    def verify_pair(
        self, data_a: bytes, data_b: bytes, caller: Caller, threshold: float | None = None
    ) -> PairVerification:
        limit = self._threshold(threshold)
        found = self.analyze_many([Upload("image_a", data_a), Upload("image_b", data_b)], True)
        faces = []
        for name, f in zip(("image_a", "image_b"), found, strict=True):
            if isinstance(f, FaceRecError):
                f.details.setdefault("image", name)
                raise f
            if not f.faces:
                raise NoFaceError(f"no face found in {name}", image=name)
            faces.append(f.faces[0])
        a, b = (f.embedding for f in faces)
        assert a is not None and b is not None
        similarity = float(a @ b)
        match = similarity >= limit
        self.audit(
            "verify_pair",
            "match" if match else "no_match",
            caller,
            score=similarity,
            threshold=limit,
        )
        return PairVerification(match, round(similarity, 6), limit, faces[0], faces[1])

    def identify_faces(
        self, faces: Sequence[Face], top_k: int, threshold: float | None, caller: Caller
    ) -> list[IdentifiedFace]:
        """Candidates (best face per subject, best first) and the open-set match per face,
        among the subjects the caller may see."""
        limit = self._threshold(threshold)
        if not 1 <= top_k <= 100:
            raise InvalidArgumentError("top_k must be between 1 and 100")
        if not faces:
            return []
        probes = np.stack([f.embedding for f in faces if f.embedding is not None])
        scope = {"namespace": caller.namespace, "gallery": caller.gallery}
        hits = self.index.search(probes, top_k=min(16 * top_k, 1000), **scope)
        names = self.db.subjects.names(sorted({h.subject_id for hs in hits for h in hs}), **scope)
        out = []
        for face, face_hits in zip(faces, hits, strict=True):
            best: dict[str, float] = {}
            for h in face_hits:
                if h.subject_id in names and h.similarity > best.get(h.subject_id, -2.0):
                    best[h.subject_id] = h.similarity
            ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
            candidates = [Candidate(s, names[s], round(sim, 6)) for s, sim in ranked]
            match = candidates[0] if candidates and ranked[0][1] >= limit else None
            out.append(IdentifiedFace(face, candidates, match))
        return out

    def identify(
        self, upload: Upload, caller: Caller, top_k: int = 5, threshold: float | None = None
    ) -> Identification:
        """Every face of one image, with candidates and the open-set match."""
        limit = self._threshold(threshold)
        return self._identified(upload.name, self._analyze(upload.data), caller, top_k, limit)

    def identify_many(
        self,
        uploads: Sequence[Upload],
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
    ) -> list[Identification | FailedImage]:
        """:meth:`identify` for several uploads; a bad upload yields its error entry."""
        limit = self._threshold(threshold)
        results: list[Identification | FailedImage] = []
        for upload, found in zip(uploads, self.analyze_many(uploads), strict=True):
            if isinstance(found, FaceRecError):
                results.append(FailedImage(upload.name, found))
            else:
                results.append(self._identified(upload.name, found, caller, top_k, limit))
        return results

    def _identified(
        self, name: str, found: ImageFaces, caller: Caller, top_k: int, limit: float
    ) -> Identification:
        faces = self.identify_faces(found.faces, top_k, limit, caller)
        for face in faces:
            match = face.match
            self.audit(
                "identify",
                "match" if match else "no_match",
                caller,
                subject=match.subject_id if match else None,
                score=face.candidates[0].similarity if face.candidates else None,
                threshold=limit,
            )
        if not faces:
            self.audit("identify", "no_match", caller, threshold=limit)
        return Identification(name, limit, faces)

    def detect(self, data: bytes) -> list[DetectedFace]:
        """Every face with its box, score, landmarks and enrolment quality."""
        faces = self._analyze(data)
        return [DetectedFace(f, face_quality(f)) for f in faces.faces]

    def embed(self, data: bytes, caller: Caller) -> list[Face]:
        """Every face with its embedding float32[D] (audited: embeddings are biometric)."""
        faces = self._analyze(data)
        self.audit("embed", "ok", caller)
        return faces.faces
