"""Verification (1:1), identification (1:N), detection and raw embeddings.

``verify`` and ``identify``, the requests a deployment serves most, are ``async def`` and
hand their blocking work to the thread pool themselves, once: a plain ``def`` route costs
a second hand-off, since FastAPI then also runs the response's serialisation in the pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import (
    DetectionDep,
    IdentificationDep,
    IdentifyCaller,
    Multipart,
    SettingsDep,
    VerificationDep,
    VerifyCaller,
    read_upload,
)
from gateway.api.schemas import (
    IDENTIFY_ERRORS,
    BatchOut,
    DetectedFace,
    FacesOut,
    IdentifyOut,
    PairOut,
    VerifyOut,
)
from gateway.errors import PayloadTooLargeError

router = APIRouter(prefix="/v1", tags=["recognition"], dependencies=[Multipart])

Threshold = Annotated[
    float | None,
    Form(ge=-1.0, le=1.0, description="cosine threshold (default: calibrated on LFW)"),
]
IdentifyThreshold = Annotated[
    float | None,
    Form(
        ge=-1.0,
        le=1.0,
        description="explicit cosine threshold, overriding fpir (a key without the admin "
        "role may only set one at or above the service's operating point)",
    ),
]
Fpir = Annotated[
    float | None,
    Form(
        gt=0.0,
        lt=1.0,
        description="target false positive identification rate (default "
        "FACEREC_IDENTIFY_FPIR, 1e-3; calibrated range 1e-3 to 0.1): the threshold is the "
        "model card's for this FPIR and the gallery's size. A key without the admin role "
        "may only ask for a rate at or below the service's",
    ),
]
TopK = Annotated[
    int,
    Form(
        ge=1,
        le=100,
        description="candidates per face (a key without the admin role sees only those at "
        "or above the threshold)",
    ),
]


@router.post("/verify", response_model=VerifyOut)
async def verify(
    image: Annotated[UploadFile, File()],
    subject_id: Annotated[str, Form(min_length=1, max_length=64)],
    verification: VerificationDep,
    settings: SettingsDep,
    caller: VerifyCaller,
    threshold: Threshold = None,
) -> VerifyOut:
    """Is the main face in ``image`` the subject ``subject_id``?"""

    def work() -> VerifyOut:
        upload = read_upload(image, settings.max_upload_bytes)
        result = verification.verify(upload.data, subject_id, caller, threshold)
        return VerifyOut.model_validate(result.to_dict())

    return await run_in_threadpool(work)


@router.post("/verify/pair", response_model=PairOut)
def verify_pair(
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    verification: VerificationDep,
    settings: SettingsDep,
    caller: VerifyCaller,
    threshold: Threshold = None,
) -> PairOut:
    """Are the main faces of two images the same person?"""
    limit = settings.max_upload_bytes
    a, b = read_upload(image_a, limit), read_upload(image_b, limit)
    result = verification.verify_pair(a.data, b.data, caller, threshold)
    return PairOut.model_validate(result.to_dict())


@router.post("/identify", response_model=IdentifyOut, responses=IDENTIFY_ERRORS)
async def identify(
    image: Annotated[UploadFile, File()],
    identification: IdentificationDep,
    settings: SettingsDep,
    caller: IdentifyCaller,
    top_k: TopK = 5,
    threshold: IdentifyThreshold = None,
    fpir: Fpir = None,
) -> IdentifyOut:
    """Who is each face in ``image``? Subjects are ranked by the identification policy's
    score (the cosine with the centroid of their templates by default); ``match`` is the
    best if it reaches the threshold of the operating point, else null (open set). The
    result reports that operating point: ``threshold``, ``fpir``, ``gallery_size``,
    ``method``, ``threshold_source`` (``calibrated``, ``extrapolated`` or ``explicit``)."""

    def work() -> IdentifyOut:
        upload = read_upload(image, settings.max_upload_bytes)
        result = identification.identify(upload, caller, top_k, threshold, fpir)
        return IdentifyOut.model_validate(result.to_dict())

    return await run_in_threadpool(work)


@router.post("/batch/identify", response_model=BatchOut, responses=IDENTIFY_ERRORS)
def batch_identify(
    images: Annotated[list[UploadFile], File()],
    identification: IdentificationDep,
    settings: SettingsDep,
    caller: IdentifyCaller,
    top_k: TopK = 5,
    threshold: IdentifyThreshold = None,
    fpir: Fpir = None,
) -> BatchOut:
    """:func:`identify` for several images in one request (a result or error each)."""
    most = settings.max_batch_images
    if len(images) > most:
        raise PayloadTooLargeError(
            f"at most {most} images per batch; use /v1/jobs", code="too_many_files"
        )
    uploads = [read_upload(f, settings.max_upload_bytes) for f in images]
    results = identification.identify_many(uploads, caller, top_k, threshold, fpir)
    return BatchOut(results=[IdentifyOut.model_validate(r.to_dict()) for r in results])


@router.post("/detect", response_model=FacesOut)
def detect(
    image: Annotated[UploadFile, File()],
    detection: DetectionDep,
    settings: SettingsDep,
    caller: IdentifyCaller,
) -> FacesOut:
    """Boxes, scores, landmarks and quality of every face."""
    upload = read_upload(image, settings.max_upload_bytes)
    faces = detection.detect(upload.data)
    return FacesOut(faces=[DetectedFace.model_validate(f.to_dict()) for f in faces])


@router.post("/embed", response_model=FacesOut)
def embed(
    image: Annotated[UploadFile, File()],
    detection: DetectionDep,
    settings: SettingsDep,
    caller: IdentifyCaller,
) -> FacesOut:
    """Every face with its raw 128-d embedding (for clients that match elsewhere)."""
    upload = read_upload(image, settings.max_upload_bytes)
    faces = detection.embed(upload.data, caller)
    return FacesOut(
        faces=[DetectedFace.model_validate(f.to_dict(with_embedding=True)) for f in faces]
    )
