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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.errors import NotFoundError
from gateway.service import Upload
from gateway.storage.schema import JobRow, now
from gateway.store import Store

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CHUNK = 8  # images analysed together, and how often progress is saved


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str  # queued | running | done | failed
    total: int
    done: int
    params: dict[str, Any]
    results: list[Any]
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


def _job(row: JobRow) -> Job:
    return Job(
        row.id,
        row.kind,
        row.status,
        row.total,
        row.done,
        dict(row.params),
        list(row.results),
        row.error,
        row.created_at,
        row.finished_at,
    )


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

    def __init__(self, store: Store, work: Worker) -> None:
        self.store, self.work = store, work
        self._queue: queue.Queue[tuple[str, list[Upload]] | None] = queue.Queue()
        self._mark_interrupted()
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def _mark_interrupted(self) -> None:
        with Session(self.store.engine) as s, s.begin():
            for row in s.scalars(select(JobRow).where(JobRow.status.in_(["queued", "running"]))):
                row.status = "failed"
                row.error = {"code": "interrupted", "message": "the service restarted"}
                row.finished_at = now()

    def submit(
        self, kind: str, uploads: list[Upload], params: dict[str, Any], key_id: str | None
    ) -> Job:
        with Session(self.store.engine) as s, s.begin():
            row = JobRow(kind=kind, key_id=key_id, total=len(uploads), params=params, results=[])
            s.add(row)
            s.flush()
            job = _job(row)
        self._queue.put((job.id, uploads))
        return job

    def get(self, job_id: str) -> Job:
        with Session(self.store.engine) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            return _job(row)

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
                self._update(job_id, status="failed", error=error, finished_at=now())

    def _process(self, job_id: str, uploads: list[Upload]) -> None:
        params = self.get(job_id).params
        self._update(job_id, status="running")
        results: list[Any] = []
        for start in range(0, len(uploads), CHUNK):
            results.extend(self.work(uploads[start : start + CHUNK], params))
            self._update(job_id, done=len(results), results=list(results))
        self._update(job_id, status="done", finished_at=now())

    def _update(self, job_id: str, **values: Any) -> None:
        with Session(self.store.engine) as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)
