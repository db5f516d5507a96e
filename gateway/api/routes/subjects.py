"""Subjects (enrolled people) and their faces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from gateway.api.deps import EnrolCaller, Multipart, ServiceDep, SettingsDep, read_upload
from gateway.api.schemas import (
    EnrolOut,
    EnrolResult,
    FaceOut,
    SubjectDetail,
    SubjectIn,
    SubjectOut,
    SubjectPage,
    SubjectPatch,
)
from gateway.service.types import UNSET, Subject

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])


def _out(s: Subject) -> SubjectOut:
    return SubjectOut(
        id=s.id,
        name=s.name,
        metadata=s.meta,
        created_at=s.created_at,
        expires_at=s.expires_at,
        faces=s.faces,
    )


@router.post("", status_code=201, response_model=SubjectOut)
def create_subject(body: SubjectIn, service: ServiceDep, caller: EnrolCaller) -> SubjectOut:
    """Create a subject (a person); add faces with ``POST /v1/subjects/{id}/faces``."""
    return _out(service.create_subject(body.name, body.metadata, body.expires_at, caller))


@router.get("", response_model=SubjectPage)
def list_subjects(
    service: ServiceDep,
    caller: EnrolCaller,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SubjectPage:
    page = service.list_subjects(offset, limit)
    return SubjectPage(
        items=[_out(s) for s in page.items], total=page.total, offset=offset, limit=limit
    )


@router.get("/{subject_id}", response_model=SubjectDetail)
def get_subject(subject_id: str, service: ServiceDep, caller: EnrolCaller) -> SubjectDetail:
    subject = service.get_subject(subject_id)
    faces = [
        FaceOut(id=f.id, quality=f.quality, box=f.box, created_at=f.created_at)
        for f in service.faces(subject_id)
    ]
    return SubjectDetail(**_out(subject).model_dump(), face_list=faces)


@router.patch("/{subject_id}", response_model=SubjectOut)
def update_subject(
    subject_id: str, body: SubjectPatch, service: ServiceDep, caller: EnrolCaller
) -> SubjectOut:
    expires = body.expires_at if "expires_at" in body.model_fields_set else UNSET
    return _out(service.update_subject(subject_id, caller, body.name, body.metadata, expires))


@router.delete("/{subject_id}", status_code=204)
def delete_subject(subject_id: str, service: ServiceDep, caller: EnrolCaller) -> Response:
    """Delete a subject: its vectors, its templates and its data key (crypto-shredding)."""
    service.delete_subject(subject_id, caller)
    return Response(status_code=204)


@router.post("/{subject_id}/faces", response_model=EnrolOut, dependencies=[Multipart])
def add_faces(
    subject_id: str,
    images: Annotated[list[UploadFile], File(description="one or more face images")],
    service: ServiceDep,
    settings: SettingsDep,
    caller: EnrolCaller,
    face: Annotated[
        str,
        Form(
            pattern="^(only|primary|[0-9]{1,3})$",
            description="with several faces: 'only' refuses, 'primary' takes the largest "
            "and most central, a number takes that face as listed by /v1/detect",
        ),
    ] = "only",
) -> EnrolOut:
    """Enrol the face in each image; each gets its own result or error."""
    uploads = [read_upload(f, settings.max_upload_bytes) for f in images]
    enrolment = service.enrol(subject_id, uploads, face, caller)
    return EnrolOut(
        subject_id=enrolment.subject_id,
        results=[EnrolResult.model_validate(r.to_dict()) for r in enrolment.results],
        enrolled=enrolment.enrolled,
    )


@router.delete("/{subject_id}/faces/{face_id}", status_code=204)
def delete_face(
    subject_id: str, face_id: str, service: ServiceDep, caller: EnrolCaller
) -> Response:
    service.delete_face(subject_id, face_id, caller)
    return Response(status_code=204)
