"""The face operations, independent of HTTP: subjects, enrolment, 1:1 and 1:N matching.

Every operation that touches biometric data writes an audit event. Inference goes through
the :class:`~facerec.batching.MicroBatcher`, so concurrent requests share pipeline calls.
What enrolment and deletion change in the database and the index, and in which order, is
:class:`~gateway.gallery.Gallery`'s business. Which face is enrolled and whether it may be
(:mod:`.enrolment`), and how 1:N candidates are ranked and decided (:mod:`.matching`),
follow the core's policy (:mod:`facerec.selection`, :mod:`facerec.matching`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np

from facerec.batching import MicroBatcher
from facerec.enrolment import enrol_in_order
from facerec.errors import FaceRecError, ImageError, InvalidArgumentError, NoFaceError
from facerec.imaging.budget import DecodeBudget
from facerec.imaging.decode import (
    DECODE_BYTES_PER_PIXEL,
    DecodeLimits,
    decode_cost,
    decode_image,
    probe_image,
)
from facerec.matching import (
    DEFAULT_SCORING,
    Candidate,
    IdentificationPolicy,
    Scoring,
    decide,
    verified,
)
from facerec.openset import DEFAULT_FPIR, OperatingPoint
from facerec.pipeline import Face, FacePipeline, ImageFaces
from facerec.selection import DEFAULT_GATES, EnrolmentGates, check_enrolment
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.errors import ForbiddenError, NotFoundError
from gateway.gallery import Gallery
from gateway.memory import release_memory
from gateway.model_ids import mismatch
from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE, check_id
from gateway.service.enrolment import (
    Prepared,
    choose_face,
    enrolment_quality,
    face_at,
    face_quality,
)
from gateway.service.matching import IndexMatcher, scope_of, visible
from gateway.service.models import ModelCensus
from gateway.service.names import clean_name
from gateway.service.types import (
    UNSET,
    Caller,
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
from gateway.service.types import Candidate as NamedCandidate
from gateway.storage.database import Database


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
        budget: DecodeBudget | None = None,
        trim_after_pixels: int = 0,
        gates: EnrolmentGates = DEFAULT_GATES,
        fpir: float = DEFAULT_FPIR,
        scoring: Scoring = DEFAULT_SCORING,
    ) -> None:
        self.db, self.gallery, self.pipeline, self.batcher = db, gallery, pipeline, batcher
        # not given: the per-image limit's, else room for ten of the largest images
        largest = limits.max_pixels * max(DECODE_BYTES_PER_PIXEL.values())
        self.budget = budget or DecodeBudget(limits.max_decode_bytes or 10 * largest)
        self.trim_after_pixels = trim_after_pixels
        self.index = gallery.index
        self.model_id = gallery.model_id  # the identity of the model templates are of
        self.model_census = ModelCensus(db.subjects, self.model_id)
        self.audit_log = audit_log
        self.limits = limits
        self.store_images = store_images
        self.gates = gates
        self.threshold = pipeline.threshold  # 1:1 (verify)
        cfg = pipeline.config
        self.policy = IdentificationPolicy.from_card(
            pipeline.card, cfg.alignment, cfg.flip, cfg.precision, scoring
        )
        self.matcher = IndexMatcher(self.policy, self.index, db.subjects, fpir)
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
        return Readiness(checks, {"id": self.model_id})

    @contextmanager
    def decoded(
        self,
        data: bytes,
        limits: DecodeLimits | None = None,
        formats: frozenset[str] | None = None,
    ) -> Iterator[np.ndarray]:
        """One image (an upload, a video frame) decoded to RGB uint8[H, W, 3], the one way
        every route and the video path decode. The header is checked first against
        ``limits`` (the service's by default; a file too short for its frame is
        ``truncated_image``; a format outside ``formats``, when given, is
        ``unsupported_format``); then what decoding it costs (:func:`decode_cost`:
        channels and depth counted) is reserved in the budget shared by every request and
        frame in flight, until the block ends, so concurrent large images wait (or get
        503 ``busy``) instead of adding up; after a large one, freed memory goes back to
        the system."""
        limits = limits or self.limits
        info = probe_image(data, limits)
        if formats is not None and info.format not in formats:
            raise ImageError(
                f"send {' or '.join(sorted(formats))}, not {info.format}",
                code="unsupported_format",
                format=info.format,
            )
        try:
            with self.budget.reserve(decode_cost(info)):
                yield decode_image(data, limits)
        finally:
            if self.trim_after_pixels and info.pixels >= self.trim_after_pixels:
                release_memory()

    def _analyze(self, data: bytes, primary_only: bool = False) -> ImageFaces:
        """Decode and analyse one upload (within the decode budget, see :meth:`decoded`)."""
        with self.decoded(data) as image:
            return self.batcher.analyze(image, primary_only)

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
        return self.db.subjects.get(
            check_id(subject_id, "subject id"), caller.namespace, caller.gallery
        )

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
        subject = self.get_subject(subject_id, caller)
        removed = self.gallery.delete_subject(subject.id)
        self.matcher.sizes.changed(-1 if removed else 0, subject.scope)
        self.model_census.changed()
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
        subject = self.get_subject(subject_id, caller)
        subject_id = subject.id
        if not uploads:
            raise InvalidArgumentError("no images uploaded", code="missing_image")
        prepared = list(self._fanout.map(lambda u: self._prepare(u, choice), uploads))
        existing = self.db.subjects.candidate_templates([subject_id], model_id=self.model_id).get(
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
        self.model_census.changed()
        if not had_faces and any(isinstance(r, Enrolled) for r in done):
            self.matcher.sizes.changed(+1, subject.scope)
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
        try:
            with self.decoded(upload.data) as image:
                detections = self.batcher.detect(image)
                height, width = image.shape[:2]
                k = choose_face(detections, height, width, choice)
                crop = self.pipeline.align(image, detections.take([k]))
            face = face_at(detections, k)
            check_enrolment(face, (height, width), crop[0], None, self.gates)
            embedding = self.batcher.embed(crop)[0]
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
        subject = self.get_subject(subject_id, caller)
        self.gallery.delete_face(subject.id, check_id(face_id, "face id"))
        last = not any(
            f.state == "indexed" and f.model_id == self.model_id
            for f in self.db.subjects.faces(subject.id)
        )
        self.matcher.sizes.changed(-1 if last else 0, subject.scope)
        self.model_census.changed()
        self.audit("delete_face", "ok", caller, subject=subject_id)

    # -- matching ---------------------------------------------------------------------------
    def verify(
        self, data: bytes, subject_id: str, caller: Caller, threshold: float | None = None
    ) -> Verification:
        """1:1 against the subject's best-matching template of the running model; a subject
        with templates only of other models is refused (409 ``template_model_mismatch``)."""
        limit = self._threshold(threshold)
        self.get_subject(subject_id, caller)
        templates = [v for _, _, v in self.db.subjects.templates(subject_id, self.model_id)]
        if not templates:
            stored = list(self.db.subjects.model_counts(subject_id))
            if stored:
                raise mismatch(subject_id, self.model_id, stored)
            raise NoFaceError(
                f"subject {subject_id} has no enrolled faces", code="subject_has_no_faces"
            )
        probe = self._probe(data)
        assert probe.embedding is not None
        similarity = float(np.max(np.stack(templates) @ probe.embedding))
        match = verified(similarity, limit)
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
        match = verified(similarity, limit)
        self.audit(
            "verify_pair",
            "match" if match else "no_match",
            caller,
            score=similarity,
            threshold=limit,
        )
        return PairVerification(match, round(similarity, 6), limit, faces[0], faces[1])

    # -- 1:N -------------------------------------------------------------------------------
    def match_embeddings(
        self, probes: np.ndarray, top_k: int, caller: Caller | None = None
    ) -> list[list[Candidate]]:
        """For each probe float32[N, D], up to ``top_k`` enrolled subjects ranked by the
        policy's scoring (centroid by default) over the index, best first. No threshold
        is applied: decide with :func:`facerec.matching.decide` at :meth:`operating_point`,
        and show a caller only :func:`~gateway.service.matching.visible` candidates."""
        return self._match(probes, top_k, caller)[0]

    def _match(
        self, probes: np.ndarray, top_k: int, caller: Caller | None
    ) -> tuple[list[list[Candidate]], dict[str, str]]:
        """(ranked candidates per probe, names of their subjects)."""
        _check_top_k(top_k)
        return self.matcher.match(probes, top_k, scope_of(caller))

    def operating_point(
        self,
        fpir: float | None = None,
        threshold: float | None = None,
        caller: Caller | None = None,
    ) -> OperatingPoint:
        """The identification threshold for the gallery's current size: an explicit
        ``threshold``, else the model card's for ``fpir`` (default ``FACEREC_IDENTIFY_FPIR``).
        Given a ``caller`` without the admin role, a point looser than the service's is
        refused (403 ``threshold_not_allowed``)."""
        return self.matcher.operating_point(fpir, threshold, caller)

    def identify_faces(
        self,
        faces: Sequence[Face],
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        caller: Caller | None = None,
        point: OperatingPoint | None = None,
    ) -> list[IdentifiedFace]:
        """Candidates (subjects ranked by the policy, best first; those ``caller`` may see)
        and the open-set decision per face, at ``point`` (default: :meth:`operating_point`
        for ``fpir``/``threshold``)."""
        _check_top_k(top_k)
        if point is None:
            point = self.operating_point(fpir, threshold, caller)
        if not faces:
            return []
        probes = np.stack([f.embedding for f in faces if f.embedding is not None])
        ranked, names = self._match(probes, top_k, caller)
        out = []
        for face, candidates in zip(faces, ranked, strict=True):
            decision = decide(candidates, point)
            shown = [
                NamedCandidate(c.subject_id, names[c.subject_id], round(c.similarity, 6))
                for c in visible(decision.candidates, point, caller)
            ]
            match = None
            if decision.match is not None:
                match = next(c for c in shown if c.subject_id == decision.match.subject_id)
            best = decision.candidates[0].similarity if decision.candidates else None
            out.append(IdentifiedFace(face, shown, match, best))
        return out

    def identify(
        self,
        upload: Upload,
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
    ) -> Identification:
        """Every face of one image, with candidates and the open-set decision."""
        point = self.operating_point(fpir, threshold, caller)
        return self._identified(upload.name, self._analyze(upload.data), caller, top_k, point)

    def identify_many(
        self,
        uploads: Sequence[Upload],
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
    ) -> list[Identification | FailedImage]:
        """:meth:`identify` for several uploads (one operating point for all); a bad upload
        yields its error entry."""
        point = self.operating_point(fpir, threshold, caller)
        results: list[Identification | FailedImage] = []
        for upload, found in zip(uploads, self.analyze_many(uploads), strict=True):
            if isinstance(found, FaceRecError):
                results.append(FailedImage(upload.name, found))
            else:
                results.append(self._identified(upload.name, found, caller, top_k, point))
        return results

    def _identified(
        self, name: str, found: ImageFaces, caller: Caller, top_k: int, point: OperatingPoint
    ) -> Identification:
        faces = self.identify_faces(found.faces, top_k, caller=caller, point=point)
        for face in faces:
            match = face.match
            self.audit(
                "identify",
                "match" if match else "no_match",
                caller,
                subject=match.subject_id if match else None,
                score=None if face.best is None else round(face.best, 6),
                threshold=point.threshold,
            )
        if not faces:
            self.audit("identify", "no_match", caller, threshold=point.threshold)
        return Identification(name, point, faces)

    def detect(self, data: bytes) -> list[DetectedFace]:
        """Every face with its box, score, landmarks and enrolment quality."""
        faces = self._analyze(data)
        return [DetectedFace(f, face_quality(f)) for f in faces.faces]

    def embed(self, data: bytes, caller: Caller) -> list[Face]:
        """Every face with its embedding float32[D] (audited: embeddings are biometric)."""
        faces = self._analyze(data)
        self.audit("embed", "ok", caller)
        return faces.faces


def _check_top_k(top_k: int) -> None:
    if not 1 <= top_k <= 100:
        raise InvalidArgumentError("top_k must be between 1 and 100")
