"""Asynchronous identification jobs: many images in, a job id out, progress and results on
request.

Uploads stay in memory only (no raw image reaches the disk); a job cut short by a restart
is marked ``failed`` with the code ``interrupted`` when the service starts again.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import zipfile
from collections.abc import Sequence
from typing import Any

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.errors import ForbiddenError
from gateway.service.faces import FaceService
from gateway.service.types import Caller, Job, Upload
from gateway.storage.jobs import JobRepository
from gateway.storage.schema import now

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CHUNK = 8  # images analysed together, and how often progress is saved


def unpack_uploads(uploads: Sequence[Upload], max_files: int, max_bytes: int) -> list[Upload]:
    """Expand zip archives into their image members; other uploads pass through."""
    out: list[Upload] = []
    for upload in uploads:
        if not upload.data.startswith(b"PK\x03\x04"):
            out.append(upload)
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(upload.data))
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir() and m.filename.lower().endswith(IMAGE_SUFFIXES)
            ]
            for m in members:
                if m.file_size > max_bytes:
                    raise InvalidArgumentError(
                        f"{m.filename} in {upload.name} is larger than {max_bytes} bytes",
                        code="file_too_large",
                    )
                if len(out) >= max_files:
                    break
                out.append(Upload(f"{upload.name}/{m.filename}", archive.read(m)))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise InvalidArgumentError(
                f"{upload.name} is not a readable zip archive: {exc}", code="bad_archive"
            ) from None
    if not out:
        raise InvalidArgumentError("no images in the upload", code="missing_image")
    if len(out) > max_files:
        raise InvalidArgumentError(f"at most {max_files} images per job", code="too_many_files")
    return out


class JobService:
    """Jobs submitted, and one background thread working through them in order."""

    def __init__(
        self, jobs: JobRepository, faces: FaceService, max_files: int, max_bytes: int
    ) -> None:
        self.jobs, self.faces = jobs, faces
        self.max_files, self.max_bytes = max_files, max_bytes
        self._queue: queue.Queue[tuple[str, list[Upload]] | None] = queue.Queue()
        self.jobs.fail_unfinished({"code": "interrupted", "message": "the service restarted"})
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def submit_identify(
        self, uploads: Sequence[Upload], top_k: int, threshold: float | None, caller: Caller
    ) -> Job:
        """Queue the identification of images and zip archives of them (at most
        ``max_files`` images, each at most ``max_bytes``)."""
        images = unpack_uploads(uploads, self.max_files, self.max_bytes)
        params = {"top_k": top_k, "threshold": threshold, **caller.audit_fields()}
        job = self.jobs.create("identify", caller.key_id, len(images), params)
        self._queue.put((job.id, images))
        return job

    def get(self, job_id: str, caller: Caller) -> Job:
        """A job, with its results so far; only its owner (or an admin) may see it."""
        job = self.jobs.get(job_id)
        if caller.role != "admin" and job.key_id != caller.key_id:
            raise ForbiddenError("this job belongs to another API key")
        return job

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job_id, uploads = item
            try:
                self._process(job_id, uploads)
            except Exception as exc:  # the job fails, the runner lives on
                log.exception("job %s failed", job_id)
                error = (
                    exc.to_dict()
                    if isinstance(exc, FaceRecError)
                    else {"code": "internal_error", "message": "the job failed"}
                )
                self.jobs.update(job_id, status="failed", error=error, finished_at=now())

    def _process(self, job_id: str, uploads: list[Upload]) -> None:
        params = self.jobs.get(job_id).params
        caller = Caller(params.get("key_id"), params.get("role"), params.get("request_id"))
        top_k, threshold = int(params["top_k"]), params["threshold"]
        self.jobs.update(job_id, status="running")
        results: list[dict[str, Any]] = []
        for start in range(0, len(uploads), CHUNK):
            chunk = uploads[start : start + CHUNK]
            identified = self.faces.identify_many(chunk, caller, top_k, threshold)
            results.extend(r.to_dict() for r in identified)
            self.jobs.update(job_id, done=len(results), results=list(results))
        self.jobs.update(job_id, status="done", finished_at=now())
