"""Asynchronous identification of many images (a zip archive or many files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from gateway.api.deps import (
    IdentifyCaller,
    IdentifyChange,
    JobsDep,
    Multipart,
    SettingsDep,
    read_upload,
)
from gateway.api.routes.recognition import Fpir, IdentifyThreshold, TopK
from gateway.api.schemas import IDENTIFY_ERRORS, JobOut
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
    responses=IDENTIFY_ERRORS,
    dependencies=[Multipart],
    openapi_extra={"x-body": "archive"},  # the archive limit (gateway.api.policy)
)
def create_job(
    files: Annotated[list[UploadFile], File(description="images and/or zip archives of them")],
    jobs: JobsDep,
    settings: SettingsDep,
    caller: IdentifyChange,
    top_k: TopK = 5,
    threshold: IdentifyThreshold = None,
    fpir: Fpir = None,
) -> JobOut:
    """Queue an identification job; poll ``GET /v1/jobs/{id}`` for progress and results
    (each image's as ``/v1/identify`` gives it, operating point included)."""
    uploads = [read_upload(f, settings.max_archive_bytes) for f in files]
    return _out(jobs.submit_identify(uploads, top_k, threshold, caller, fpir), False)


@router.get("/{job_id}", response_model=JobOut)
def get_job(
    job_id: str,
    jobs: JobsDep,
    caller: IdentifyCaller,
    results: Annotated[bool, Query(description="include the results so far")] = True,
) -> JobOut:
    """A job of this API key (404 for any other key's, as for an unknown id), from any
    replica; ``results``: one per image done so far, in the order of the upload."""
    return _out(jobs.get(job_id, caller, results), results)


@router.delete("/{job_id}", response_model=JobOut)
def cancel_job(job_id: str, jobs: JobsDep, caller: IdentifyChange) -> JobOut:
    """Cancel a job of this API key: its stored inputs are deleted at once, a worker
    running it stops after the images in hand, and the results so far stay readable
    (status ``cancelled``). A job that has ended is returned as it is."""
    return _out(jobs.cancel(job_id, caller), False)
