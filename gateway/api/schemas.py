"""Request and response bodies, as they appear in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.api_keys import ROLES

SCOPE_NAME = "^[A-Za-z0-9_-]{1,64}$"


class SubjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = Field(
        None, description="purge this subject after this time (no offset: UTC)"
    )
    gallery: str | None = Field(
        None,
        pattern=SCOPE_NAME,
        description="the gallery within the namespace (default: the key's, or 'default')",
    )


class SubjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None


class FaceOut(BaseModel):
    id: str
    quality: float
    box: list[float]
    created_at: datetime


class SubjectOut(BaseModel):
    id: str
    name: str
    namespace: str
    gallery: str
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    faces: int


class SubjectDetail(SubjectOut):
    face_list: list[FaceOut]


class SubjectPage(BaseModel):
    items: list[SubjectOut]
    total: int
    offset: int
    limit: int


class ErrorBody(BaseModel):
    code: str
    message: str
    model_config = ConfigDict(extra="allow")


class ErrorOut(BaseModel):
    error: ErrorBody


class DetectedFace(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels")
    score: float
    landmarks: list[list[float]] = Field(description="5 points: eyes, nose, mouth corners")
    model_config = ConfigDict(extra="allow")


class EnrolResult(BaseModel):
    image: str
    face_id: str | None = None
    quality: float | None = None
    box: list[float] | None = None
    score: float | None = None
    landmarks: list[list[float]] | None = None
    error: ErrorBody | None = None


class EnrolOut(BaseModel):
    subject_id: str
    results: list[EnrolResult]
    enrolled: int


class VerifyOut(BaseModel):
    match: bool
    similarity: float
    threshold: float
    subject_id: str
    face: DetectedFace


class PairOut(BaseModel):
    match: bool
    similarity: float
    threshold: float
    face_a: DetectedFace
    face_b: DetectedFace


class Candidate(BaseModel):
    subject_id: str
    name: str
    similarity: float


class IdentifiedFace(DetectedFace):
    candidates: list[Candidate]
    match: Candidate | None


class IdentifyOut(BaseModel):
    image: str
    threshold: float | None = None
    faces: list[IdentifiedFace] = []
    error: ErrorBody | None = None


class BatchOut(BaseModel):
    results: list[IdentifyOut]


class FacesOut(BaseModel):
    faces: list[DetectedFace]


class JobOut(BaseModel):
    id: str
    kind: str
    status: str
    total: int
    done: int
    progress: float
    created_at: datetime
    finished_at: datetime | None
    error: ErrorBody | None
    results: list[IdentifyOut] | None = None


class AuditEventOut(BaseModel):
    seq: int
    time: str
    action: str
    outcome: str
    key_id: str | None
    role: str | None
    subject: str | None
    score: float | None
    request_id: str | None
    prev: str
    mac: str
    client: str | None = Field(None, description="client address (refused requests)")
    count: int | None = Field(None, description="refusals an aggregated event stands for")
    threshold: float | None = Field(None, description="the decision threshold (verify, identify)")
    target: str | None = Field(None, description="the key a key operation acted on")
    detail: str | None = Field(None, description="what a service event did (e.g. a repair)")


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_after: int | None


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern=f"^({'|'.join(ROLES)})$")
    label: str = Field("", max_length=256)
    namespace: str | None = Field(
        None, pattern=SCOPE_NAME, description="the tenant it acts for (default: the caller's)"
    )
    gallery: str | None = Field(
        None, pattern=SCOPE_NAME, description="limit it to one gallery of its namespace"
    )


class ApiKeyOut(BaseModel):
    id: str
    role: str
    label: str
    namespace: str
    gallery: str | None
    created_at: datetime
    revoked_at: datetime | None
    token: str | None = Field(None, description="shown once, at creation")
