"""The gateway's operations, independent of HTTP: enrolment, 1:1 and 1:N matching, deletion.

Every operation that touches biometric data writes an audit event. Inference goes through
the :class:`~facerec.batching.MicroBatcher`, so concurrent requests share pipeline calls.
Enrolment writes the sealed template as ``pending``, then the protected vector, then marks
the face ``indexed``; :meth:`gateway.vectors.IndexManager.reconcile` repairs any crash in
between at start-up.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from facerec.batching import MicroBatcher
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.imaging.decode import DecodeLimits, decode_image
from facerec.pipeline import Face, FacePipeline, ImageFaces
from gateway.audit import AuditEvent
from gateway.auditlog import AuditLog
from gateway.errors import NotFoundError
from gateway.index import check_id
from gateway.store import UNSET, Store, Subject
from gateway.vectors import IndexManager

log = logging.getLogger(__name__)

QUALITY_SIDE = 80.0  # faces this many pixels across (short side) or more lose nothing


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's id and role, and the request id."""

    key_id: str | None = None
    role: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


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
    """The operations behind the REST API (and the admin CLI)."""

    def __init__(
        self,
        store: Store,
        index: IndexManager,
        pipeline: FacePipeline,
        batcher: MicroBatcher,
        audit_log: AuditLog,
        limits: DecodeLimits,
        store_images: bool = False,
        min_quality: float = 0.5,
    ) -> None:
        self.store, self.index, self.pipeline, self.batcher = store, index, pipeline, batcher
        self.audit_log = audit_log
        self.limits = limits
        self.store_images = store_images
        self.min_quality = min_quality
        self.threshold = pipeline.threshold
        self._fanout = ThreadPoolExecutor(8, thread_name_prefix="fanout")

    def close(self) -> None:
        self._fanout.shutdown(wait=True)
        self.batcher.close()
        self.index.close()

    # -- helpers --------------------------------------------------------------------------
    def audit(self, action: str, outcome: str, caller: Caller, **values: Any) -> AuditEvent:
        return self.audit_log.append(
            action=action,
            outcome=outcome,
            key_id=caller.key_id,
            role=caller.role,
            request_id=caller.request_id,
            **values,
        )

    def _analyze(self, data: bytes, primary_only: bool = False) -> ImageFaces:
        return self.batcher.analyze(decode_image(data, self.limits), primary_only)

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
    ) -> Subject:
        subject = self.store.create_subject(name, meta, expires_at)
        self.audit("create_subject", "ok", caller, subject=subject.id)
        return subject

    def get_subject(self, subject_id: str) -> Subject:
        return self.store.get_subject(check_id(subject_id, "subject id"))

    def update_subject(
        self,
        subject_id: str,
        caller: Caller,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        expires_at: datetime | None = UNSET,
    ) -> Subject:
        subject = self.store.update_subject(
            check_id(subject_id, "subject id"), name, meta, expires_at
        )
        self.audit("update_subject", "ok", caller, subject=subject_id)
        return subject

    def delete_subject(
        self, subject_id: str, caller: Caller, action: str = "delete_subject"
    ) -> int:
        """Remove the vectors, then the record with its data key; returns the faces removed."""
        self.store.get_subject(check_id(subject_id, "subject id"))
        self.index.delete_subject(subject_id)
        faces = self.store.delete_subject(subject_id)
        self.index.delete_faces(faces)  # any face enrolled while the subject was going
        self.audit(action, "ok", caller, subject=subject_id)
        return len(faces)

    def purge_expired(self, caller: Caller) -> list[str]:
        """Delete every subject whose expiry has passed (each audited as ``expire``)."""
        purged = []
        for subject_id in self.store.expired_subjects():
            try:
                self.delete_subject(subject_id, caller, action="expire")
                purged.append(subject_id)
            except NotFoundError:
                pass  # deleted meanwhile
        return purged

    # -- enrolment ------------------------------------------------------------------------
    def enrol(
        self, subject_id: str, uploads: Sequence[Upload], choice: str, caller: Caller
    ) -> list[dict[str, Any]]:
        """Add the face of each upload to a subject; one result (or error) per upload."""
        self.store.get_subject(check_id(subject_id, "subject id"))
        if not uploads:
            raise InvalidArgumentError("no images uploaded", code="missing_image")
        analysed = self.analyze_many(uploads)
        results: list[dict[str, Any]] = []
        failures: list[FaceRecError] = []
        for upload, found in zip(uploads, analysed, strict=True):
            try:
                if isinstance(found, FaceRecError):
                    raise found
                results.append(
                    {"image": upload.name, **self._enrol_one(subject_id, upload, found, choice)}
                )
                self.audit("enrol", "ok", caller, subject=subject_id)
            except FaceRecError as exc:
                failures.append(exc)
                results.append({"image": upload.name, "error": exc.to_dict()})
                self.audit("enrol", "refused", caller, subject=subject_id)
        if len(failures) == len(uploads):  # nothing enrolled: the request as a whole failed
            first = failures[0]
            error = FaceRecError(
                first.message if len(uploads) == 1 else f"no image was enrolled ({first.message})",
                code=first.code,
                results=results,
            )
            error.http_status = first.http_status
            raise error
        return results

    def _enrol_one(
        self, subject_id: str, upload: Upload, found: ImageFaces, choice: str
    ) -> dict[str, Any]:
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
        face_id = self.store.add_face(
            subject_id,
            face.embedding,
            digest,
            quality,
            face.box.tolist(),
            image=upload.data if self.store_images else None,
        )
        try:
            self.index.add([face_id], [subject_id], face.embedding[None, :])
        except Exception:
            self.store.discard_faces([face_id])
            raise
        if not self.store.mark_indexed([face_id]):
            self.index.delete_faces([face_id])  # the subject was deleted meanwhile
            raise NotFoundError(f"subject {subject_id} was deleted during enrolment")
        return {"face_id": face_id, "quality": quality, **face.to_dict()}

    def delete_face(self, subject_id: str, face_id: str, caller: Caller) -> None:
        self.store.delete_face(check_id(subject_id, "subject id"), check_id(face_id, "face id"))
        self.index.delete_faces([face_id])
        self.audit("delete_face", "ok", caller, subject=subject_id)

    # -- matching ---------------------------------------------------------------------------
    def verify(
        self, data: bytes, subject_id: str, caller: Caller, threshold: float | None = None
    ) -> dict[str, Any]:
        """1:1 against the subject's best-matching template."""
        limit = self._threshold(threshold)
        self.store.get_subject(check_id(subject_id, "subject id"))
        templates = [v for _, _, v in self.store.templates(subject_id)]
        if not templates:
            raise NoFaceError(
                f"subject {subject_id} has no enrolled faces", code="subject_has_no_faces"
            )
        probe = self._probe(data)
        assert probe.embedding is not None
        similarity = float(np.max(np.stack(templates) @ probe.embedding))
        match = similarity >= limit
        self.audit(
            "verify", "match" if match else "no_match", caller, subject=subject_id, score=similarity
        )
        return {
            "match": match,
            "similarity": round(similarity, 6),
            "threshold": limit,
            "subject_id": subject_id,
            "face": probe.to_dict(),
        }

    def verify_pair(
        self, data_a: bytes, data_b: bytes, caller: Caller, threshold: float | None = None
    ) -> dict[str, Any]:
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
        self.audit("verify_pair", "match" if match else "no_match", caller, score=similarity)
        return {
            "match": match,
            "similarity": round(similarity, 6),
            "threshold": limit,
            "face_a": faces[0].to_dict(),
            "face_b": faces[1].to_dict(),
        }

    def identify_faces(
        self, faces: Sequence[Face], top_k: int, threshold: float | None
    ) -> list[dict[str, Any]]:
        """Candidates (best face per subject, best first) and the open-set match per face."""
        limit = self._threshold(threshold)
        if not 1 <= top_k <= 100:
            raise InvalidArgumentError("top_k must be between 1 and 100")
        if not faces:
            return []
        probes = np.stack([f.embedding for f in faces if f.embedding is not None])
        hits = self.index.search(probes, top_k=min(16 * top_k, 1000))
        names = self.store.subject_names(sorted({h.subject_id for hs in hits for h in hs}))
        out = []
        for face, face_hits in zip(faces, hits, strict=True):
            best: dict[str, float] = {}
            for h in face_hits:
                if h.subject_id in names and h.similarity > best.get(h.subject_id, -2.0):
                    best[h.subject_id] = h.similarity
            ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
            candidates = [
                {"subject_id": s, "name": names[s], "similarity": round(sim, 6)}
                for s, sim in ranked
            ]
            match = candidates[0] if candidates and ranked[0][1] >= limit else None
            out.append({**face.to_dict(), "candidates": candidates, "match": match})
        return out

    def identify(
        self, upload: Upload, caller: Caller, top_k: int = 5, threshold: float | None = None
    ) -> dict[str, Any]:
        """Every face of one image, with candidates and the open-set match."""
        limit = self._threshold(threshold)
        return self._identified(upload.name, self._analyze(upload.data), caller, top_k, limit)

    def identify_many(
        self,
        uploads: Sequence[Upload],
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`identify` for several uploads; a bad upload yields its error entry."""
        limit = self._threshold(threshold)
        results: list[dict[str, Any]] = []
        for upload, found in zip(uploads, self.analyze_many(uploads), strict=True):
            if isinstance(found, FaceRecError):
                results.append({"image": upload.name, "error": found.to_dict()})
            else:
                results.append(self._identified(upload.name, found, caller, top_k, limit))
        return results

    def _identified(
        self, name: str, found: ImageFaces, caller: Caller, top_k: int, limit: float
    ) -> dict[str, Any]:
        faces = self.identify_faces(found.faces, top_k, limit)
        for face in faces:
            match = face["match"]
            self.audit(
                "identify",
                "match" if match else "no_match",
                caller,
                subject=match["subject_id"] if match else None,
                score=face["candidates"][0]["similarity"] if face["candidates"] else None,
            )
        if not faces:
            self.audit("identify", "no_match", caller)
        return {"image": name, "threshold": limit, "faces": faces}

    def run_job(self, uploads: Sequence[Upload], params: dict[str, Any]) -> list[dict[str, Any]]:
        """One chunk of an asynchronous identification job (see :mod:`gateway.jobs`)."""
        caller = Caller(params.get("key_id"), params.get("role"), params.get("request_id"))
        return self.identify_many(uploads, caller, int(params["top_k"]), params["threshold"])

    def detect(self, data: bytes) -> list[dict[str, Any]]:
        faces = self._analyze(data)
        return [{**f.to_dict(), "quality": face_quality(f)} for f in faces.faces]

    def embed(self, data: bytes, caller: Caller) -> list[dict[str, Any]]:
        faces = self._analyze(data)
        self.audit("embed", "ok", caller)
        return [f.to_dict(with_embedding=True) for f in faces.faces]
