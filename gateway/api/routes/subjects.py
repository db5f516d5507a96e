"""Subjects (enrolled people) and their faces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from gateway.api.deps import (
    EnrolCaller,
    EnrolChange,
    EnrolmentDep,
    Multipart,
    SettingsDep,
    SubjectsDep,
    read_upload,
)
from gateway.api.schemas import (
    ENROL_ERRORS,
    EnrolOut,
    EnrolResult,
    FaceOut,
    SubjectDetail,
    SubjectIn,
    SubjectOut,
    SubjectPage,
    SubjectPatch,
)
from gateway.service.metadata import MetadataLimits, check_metadata, readable
from gateway.service.types import UNSET, Subject
from gateway.settings import Settings

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])


def _limits(settings: Settings) -> MetadataLimits:
    return MetadataLimits(settings.max_metadata_depth, settings.max_metadata_bytes)


def _out(s: Subject, limits: MetadataLimits) -> SubjectOut:
    return SubjectOut(
        id=s.id,
        name=s.name,
        namespace=s.namespace,
        gallery=s.gallery,
        metadata=readable(s.meta, limits),  # a row from before the limits cannot break this
        created_at=s.created_at,
        expires_at=s.expires_at,
        faces=s.faces,
    )


@router.post("", status_code=201, response_model=SubjectOut)
def create_subject(
    body: SubjectIn, subjects: SubjectsDep, settings: SettingsDep, caller: EnrolChange
) -> SubjectOut:
    """Create a subject (a person); add faces with ``POST /v1/subjects/{id}/faces``.
    ``metadata``: at most ``FACEREC_MAX_METADATA_DEPTH`` levels and
    ``FACEREC_MAX_METADATA_BYTES`` bytes as JSON."""
    limits = _limits(settings)
    check_metadata(body.metadata, limits)
    subject = subjects.create_subject(
        body.name, body.metadata, body.expires_at, caller, gallery=body.gallery
    )
    return _out(subject, limits)


@router.get("", response_model=SubjectPage)
def list_subjects(
    subjects: SubjectsDep,
    settings: SettingsDep,
    caller: EnrolCaller,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SubjectPage:
    page = subjects.list_subjects(caller, offset, limit)
    return SubjectPage(
        items=[_out(s, _limits(settings)) for s in page.items],
        total=page.total,
        offset=offset,
        limit=limit,
    )


@router.get("/{subject_id}", response_model=SubjectDetail)
def get_subject(
    subject_id: str, subjects: SubjectsDep, settings: SettingsDep, caller: EnrolCaller
) -> SubjectDetail:
    subject = subjects.get_subject(subject_id, caller)
    faces = [
        FaceOut(id=f.id, quality=f.quality, box=f.box, created_at=f.created_at, model_id=f.model_id)
        for f in subjects.faces_of(subject_id, caller)
    ]
    return SubjectDetail(**_out(subject, _limits(settings)).model_dump(), face_list=faces)


@router.patch("/{subject_id}", response_model=SubjectOut)
def update_subject(
    subject_id: str,
    body: SubjectPatch,
    subjects: SubjectsDep,
    settings: SettingsDep,
    caller: EnrolChange,
) -> SubjectOut:
    limits = _limits(settings)
    check_metadata(body.metadata, limits)
    expires = body.expires_at if "expires_at" in body.model_fields_set else UNSET
    subject = subjects.update_subject(subject_id, caller, body.name, body.metadata, expires)
    return _out(subject, limits)


@router.delete("/{subject_id}", status_code=204)
def delete_subject(subject_id: str, subjects: SubjectsDep, caller: EnrolChange) -> Response:
    """Delete a subject: its vectors, its templates and its data key (crypto-shredding)."""
    subjects.delete_subject(subject_id, caller)
    return Response(status_code=204)


@router.post(
    "/{subject_id}/faces", response_model=EnrolOut, responses=ENROL_ERRORS, dependencies=[Multipart]
)
def add_faces(
    subject_id: str,
    images: Annotated[list[UploadFile], File(description="one or more face images")],
    enrolment: EnrolmentDep,
    settings: SettingsDep,
    caller: EnrolChange,
    face: Annotated[
        str,
        Form(
            pattern="^(only|primary|[0-9]{1,3})$",
            description="with several faces: 'only' refuses, 'primary' takes the largest "
            "and most central, a number takes that face as listed by /v1/detect",
        ),
    ] = "only",
    force: Annotated[
        bool,
        Form(
            description="enrol faces that disagree with the subject's other templates "
            "(skips the inconsistent_face gate only; audited as forced)"
        ),
    ] = False,
) -> EnrolOut:
    """Enrol the chosen face of each image; each gets its own result or error.

    Every face passes the enrolment gates, each refusal with its own code (see the 422
    response): the face's size, detection score, the part of it inside the picture,
    sharpness, head pose, and its consistency with the subject's other templates
    (``inconsistent_face``; ``force`` skips that one). Several images in one request are
    taken most typical first. A result carries the gates' ``measures``."""
    uploads = [read_upload(f, settings.max_upload_bytes) for f in images]
    done = enrolment.enrol(subject_id, uploads, face, caller, force)
    return EnrolOut(
        subject_id=done.subject_id,
        results=[EnrolResult.model_validate(r.to_dict()) for r in done.results],
        enrolled=done.enrolled,
    )


@router.delete("/{subject_id}/faces/{face_id}", status_code=204)
def delete_face(
    subject_id: str, face_id: str, enrolment: EnrolmentDep, caller: EnrolChange
) -> Response:
    enrolment.delete_face(subject_id, face_id, caller)
    return Response(status_code=204)
