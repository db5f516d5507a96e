"""Asynchronous identification of many images (a zip archive or many files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from gateway.api.deps import (
    IdentifyCaller,
    IdentifyChange,
    JobsDep,
    Multipart,
    SettingsDep,
    read_upload,
)
from gateway.api.schemas import JobOut
from gateway.service.types import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _out(job: Job, with_results: bool) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        total=job.total,
        done=job.done,
        progress=round(job.done / job.total, 4) if job.total else 1.0,
        created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error,  # type: ignore[arg-type]
        results=job.results if with_results else None,
    )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    dependencies=[Multipart],
    openapi_extra={"x-body": "archive"},  # the archive limit (gateway.api.policy)
)
def create_job(
    files: Annotated[list[UploadFile], File(description="images and/or zip archives of them")],
    jobs: JobsDep,
    settings: SettingsDep,
    caller: IdentifyChange,
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
) -> JobOut:
    """Queue an identification job; poll ``GET /v1/jobs/{id}`` for progress and results."""
    uploads = [read_upload(f, settings.max_archive_bytes) for f in files]
    return _out(jobs.submit_identify(uploads, top_k, threshold, caller), False)


@router.get("/{job_id}", response_model=JobOut)
def get_job(
    job_id: str,
    jobs: JobsDep,
    caller: IdentifyCaller,
    results: Annotated[bool, Query(description="include the results so far")] = True,
) -> JobOut:
    return _out(jobs.get(job_id, caller), results)
