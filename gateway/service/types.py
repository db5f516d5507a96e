"""What the service takes and returns: typed values, independent of HTTP.

Each result's ``to_dict()`` is its JSON form (what the API answers and what a job stores);
the API layer turns results into its response schemas. Records read from the database
(:class:`Subject`, :class:`FaceInfo`, :class:`ApiKeyInfo`, :class:`Job`, :class:`AuditEvent`)
are returned as they are and re-exported here, so callers import from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from facerec.errors import FaceRecError
from facerec.openset import OperatingPoint
from facerec.pipeline import Face
from gateway.audit.chain import AuditEvent
from gateway.scope import Area, within
from gateway.storage.api_keys import ApiKeyInfo
from gateway.storage.faces import FaceInfo
from gateway.storage.jobs import Job
from gateway.storage.subjects import UNSET, Subject

__all__ = [
    "UNSET",
    "ApiKeyInfo",
    "Audit",
    "AuditEvent",
    "AuditPage",
    "Caller",
    "Candidate",
    "DetectedFace",
    "Enrolled",
    "Enrolment",
    "FaceInfo",
    "FailedImage",
    "IdempotencyClaim",
    "Identification",
    "IdentifiedFace",
    "Job",
    "NewApiKey",
    "PairVerification",
    "Readiness",
    "StoredResponse",
    "Subject",
    "SubjectPage",
    "Upload",
    "Verification",
]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's id and role, the request id, and what the key
    may see: subjects of ``namespace`` (None: every namespace, for the service itself and
    its command line) and, when ``gallery`` is set, of that gallery only."""

    key_id: str | None = None
    role: str | None = None
    request_id: str | None = None
    namespace: str | None = None
    gallery: str | None = None

    def audit_fields(self) -> dict[str, str | None]:
        """The caller as audit event fields."""
        return {"key_id": self.key_id, "role": self.role, "request_id": self.request_id}

    @property
    def area(self) -> Area:
        """The (namespace, gallery) this caller acts in; None: any."""
        return self.namespace, self.gallery

    def sees(self, subject: Subject) -> bool:
        """Whether ``subject`` is within this caller's namespace and gallery."""
        return within(self.area, subject.scope)

    def to_params(self) -> dict[str, str | None]:
        """The caller as JSON (a job keeps who submitted it); :meth:`from_params` reads it."""
        return {**self.audit_fields(), "namespace": self.namespace, "gallery": self.gallery}

    @staticmethod
    def from_params(params: dict[str, Any]) -> Caller:
        return Caller(
            *(params.get(k) for k in ("key_id", "role", "request_id", "namespace", "gallery"))
        )


class Audit(Protocol):
    """Appends one audit event on behalf of ``caller`` (its key, role and request id):
    :meth:`gateway.service.admin.AdminService.audit`, which every service is given."""

    def __call__(self, action: str, outcome: str, caller: Caller, **values: Any) -> AuditEvent: ...


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` now held by the request in progress."""

    key: str  # as stored: the caller's key id and the idempotency key
    fingerprint: str  # of the request that holds it


@dataclass(frozen=True)
class StoredResponse:
    """The response a request gave, returned again to a replay of it."""

    status: int
    body: bytes  # JSON, or empty


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name (for results and errors) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class FailedImage:
    """An upload of a multi-image request that could not be used, and why."""

    image: str
    error: FaceRecError

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error.to_dict()}


@dataclass(frozen=True)
class Enrolled:
    """One face added to a subject: its summary ``quality`` in [0, 1], what the enrolment
    gates measured (:meth:`facerec.selection.FaceQuality.to_dict`), and whether it is
    there only because ``force`` skipped the consistency gate."""

    image: str
    face_id: str
    quality: float  # in [0, 1]
    face: Face
    measures: dict[str, Any] = field(default_factory=dict)
    forced: bool = False

    @property
    def consistency(self) -> float | None:
        """Cosine to the centroid of the subject's templates before it (None: the first)."""
        value = self.measures.get("consistency")
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "face_id": self.face_id,
            "quality": self.quality,
            "measures": self.measures,
            "forced": self.forced,
            **self.face.to_dict(),
        }


@dataclass(frozen=True)
class Enrolment:
    """The outcome of one enrolment request: a result per upload, in upload order."""

    subject_id: str
    results: list[Enrolled | FailedImage]

    @property
    def enrolled(self) -> int:
        return sum(isinstance(r, Enrolled) for r in self.results)


@dataclass(frozen=True)
class Verification:
    """1:1 against an enrolled subject (its best-matching template)."""

    match: bool
    similarity: float  # cosine, in [-1, 1]
    threshold: float
    subject_id: str
    face: Face  # the probe face used

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "similarity": self.similarity,
            "threshold": self.threshold,
            "subject_id": self.subject_id,
            "face": self.face.to_dict(),
        }


@dataclass(frozen=True)
class PairVerification:
    """1:1 between the main faces of two images."""

    match: bool
    similarity: float
    threshold: float
    face_a: Face
    face_b: Face

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "similarity": self.similarity,
            "threshold": self.threshold,
            "face_a": self.face_a.to_dict(),
            "face_b": self.face_b.to_dict(),
        }


@dataclass(frozen=True)
class Candidate:
    """A subject close to a probe face, and its score under the identification policy's
    scoring (:class:`facerec.matching.Scoring`: by default the cosine with the centroid
    of its templates)."""

    subject_id: str
    name: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {"subject_id": self.subject_id, "name": self.name, "similarity": self.similarity}


@dataclass(frozen=True)
class IdentifiedFace:
    """One face of a probe image, its candidates (best first) and the open-set match."""

    face: Face
    candidates: list[Candidate]  # those the caller may see (facerec serve's visibility rule)
    match: Candidate | None  # None: no one is close enough
    best: float | None = None  # the best candidate's score, seen or not (for the audit)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.face.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "match": None if self.match is None else self.match.to_dict(),
        }


@dataclass(frozen=True)
class Identification:
    """Every face of one image, identified at one operating point (threshold, target
    FPIR, gallery size, scoring method and where the threshold came from)."""

    image: str
    point: OperatingPoint
    faces: list[IdentifiedFace]

    @property
    def threshold(self) -> float:
        return self.point.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            **self.point.to_dict(),
            "faces": [f.to_dict() for f in self.faces],
        }


@dataclass(frozen=True)
class DetectedFace:
    """A detected face and its enrolment quality (detector score scaled by size)."""

    face: Face
    quality: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.face.to_dict(), "quality": self.quality}


@dataclass(frozen=True)
class SubjectPage:
    items: list[Subject]
    total: int


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_after: int | None  # pass as ``after`` for the next page; None at the end


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: its token is shown once and never stored."""

    token: str
    record: ApiKeyInfo


@dataclass(frozen=True)
class Readiness:
    """Each dependency's state: ``ok`` or ``error: <what>``; and the running model's
    identity, ``{"id": "name:sha"}`` (counts only on the admin route ``/v1/models``)."""

    checks: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.checks.values())
