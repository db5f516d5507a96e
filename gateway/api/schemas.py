"""Request and response bodies, as they appear in the OpenAPI schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway.roles import ROLES
from gateway.service.enrolment import REFUSAL_CODES

SCOPE_NAME = "^[A-Za-z0-9_-]{1,64}$"


def _unicode(value: Any) -> None:
    """Raise ValueError when a string in ``value`` is not valid Unicode: JSON's ``\\ud800``
    escape gives a lone surrogate, which no database or encoder takes."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("text holds a lone surrogate (\\ud800-\\udfff): not Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _unicode(key)
            _unicode(item)
    elif isinstance(value, list):
        for item in value:
            _unicode(item)


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC (no offset: taken as UTC); ValueError past the calendar's ends."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside years 1-9999 in UTC") from None


UtcTime = Annotated[datetime, AfterValidator(_in_utc)]


class InputModel(BaseModel):
    """A request body: unknown fields refused, every string valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _unicode(data)
        return data


class SubjectIn(InputModel):
    name: str = Field(min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None
    expires_at: UtcTime | None = Field(
        None, description="purge this subject after this time (no offset: UTC)"
    )
    gallery: str | None = Field(
        None,
        pattern=SCOPE_NAME,
        description="the gallery within the namespace (default: the key's, or 'default')",
    )


class SubjectPatch(InputModel):
    name: str | None = Field(None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None
    expires_at: UtcTime | None = None


class FaceOut(BaseModel):
    id: str
    quality: float
    box: list[float]
    created_at: datetime
    model_id: str | None = None  # the model that computed the template (name:sha)


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
    quality: float | None = Field(
        None, description="detection score times min(1, face short side / 80 px), in [0, 1]"
    )
    measures: dict[str, Any] | None = Field(
        None,
        description="what the enrolment gates measured: face_size (px), score, outside "
        "(fraction of the box outside the image), pose (yaw, pitch, roll), sharpness, "
        "consistency (cosine to the centroid of the subject's earlier templates)",
    )
    forced: bool | None = Field(
        None, description="enrolled only because force skipped the consistency gate"
    )
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
    candidates: list[Candidate] = Field(
        description="subjects by score, best first (a key without the admin role sees "
        "only those at or above the threshold)"
    )
    match: Candidate | None = Field(description="the best candidate at or above the threshold")


class IdentifyOut(BaseModel):
    image: str
    threshold: float | None = Field(None, description="the cosine threshold used")
    fpir: float | None = Field(
        None, description="the target false positive identification rate (null: explicit)"
    )
    gallery_size: int | None = Field(None, description="enrolled subjects with faces")
    method: str | None = Field(None, description="subject scoring: centroid, max or topk")
    threshold_source: str | None = Field(
        None, description="calibrated, extrapolated (gallery beyond those measured) or explicit"
    )
    faces: list[IdentifiedFace] = []
    error: ErrorBody | None = None


class BatchOut(BaseModel):
    results: list[IdentifyOut]


class FacesOut(BaseModel):
    faces: list[DetectedFace]


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, running, done, failed or cancelled")
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


class ModelsOut(BaseModel):
    id: str  # the running model's identity, name:sha
    templates: int  # stored templates of it
    other_model_templates: int  # stored templates of other models: never compared
    other_models: dict[str, int]  # how many of each


class ApiKeyIn(InputModel):
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


ENROL_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorOut,
        "description": "no face enrolled; each image's error in `results`. Codes: "
        + ", ".join(f"`{c}`" for c in REFUSAL_CODES)
        + " (the enrolment gates; `quality` in the error gives what was measured), "
        "`no_face`, `multiple_faces`, `invalid_face_choice` and the image codes",
    },
    409: {"model": ErrorOut, "description": "`duplicate_face`: this image is enrolled already"},
}

IDENTIFY_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorOut,
        "description": "`threshold_not_allowed`: a key without the admin role asked for a "
        "looser operating point (lower threshold, higher fpir) than the service's",
    },
    400: {
        "model": ErrorOut,
        "description": "`fpir_out_of_range`: fpir outside the range the model card's "
        "thresholds were measured for",
    },
}
