"""Asynchronous batch jobs: many images in, a job id out, progress and results on request.

Uploads stay in memory only (no raw image reaches the disk); a job cut short by a restart
is marked ``failed`` with the code ``interrupted`` when the service starts again.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.service import Upload
from gateway.storage.jobs import Job, JobRepository
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


Worker = Callable[[Sequence[Upload], dict[str, Any]], list[dict[str, Any]]]


class JobRunner:
    """One background thread working through queued jobs in order."""

    def __init__(self, jobs: JobRepository, work: Worker) -> None:
        self.jobs, self.work = jobs, work
        self._queue: queue.Queue[tuple[str, list[Upload]] | None] = queue.Queue()
        self.jobs.fail_unfinished({"code": "interrupted", "message": "the service restarted"})
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def submit(
        self, kind: str, uploads: list[Upload], params: dict[str, Any], key_id: str | None
    ) -> Job:
        job = self.jobs.create(kind, key_id, len(uploads), params)
        self._queue.put((job.id, uploads))
        return job

    def get(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

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
        self.jobs.update(job_id, status="running")
        results: list[Any] = []
        for start in range(0, len(uploads), CHUNK):
            results.extend(self.work(uploads[start : start + CHUNK], params))
            self.jobs.update(job_id, done=len(results), results=list(results))
        self.jobs.update(job_id, status="done", finished_at=now())
