"""Asynchronous identification jobs: many images in, a job id out, progress and results on
request.

Inputs are unpacked as they are submitted into a spool on disk, sealed with a key that only
this process holds (:mod:`gateway.service.spool`), so neither a queue of jobs nor a large
archive is held in memory, and no raw image reaches the disk. Zip members are inflated in
chunks: one that inflates beyond its declared size, or an archive that inflates beyond the
job's total, is refused without inflating the rest. Queued jobs are bounded per API key
and in total (429 with ``Retry-After``). A job cut short by a restart is marked ``failed``
with the code ``interrupted`` when the service starts again (its spool is deleted).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.auth.throttle import TooManyRequestsError
from gateway.errors import ForbiddenError, PayloadTooLargeError
from gateway.memory import release_memory
from gateway.service.faces import FaceService
from gateway.service.spool import JobSpool, clear_spools
from gateway.service.types import Caller, Job, Upload
from gateway.storage.jobs import JobRepository
from gateway.storage.schema import new_id, now

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CHUNK = 8  # images analysed together, and how often progress is saved ...
CHUNK_BYTES = 32 * 1024 * 1024  # ... or fewer, when their files reach this size together
READ_CHUNK = 64 * 1024  # zip members are inflated this much at a time
RETRY_AFTER_S = 30  # what a refused submission is told to wait


@dataclass(frozen=True)
class JobLimits:
    """``max_files``: images per job; ``max_image_bytes``: per image (a zip member's
    inflated size); ``max_inflated_bytes``: all images of a job together, inflated;
    ``max_queued_per_key`` and ``max_queued``: jobs waiting or running;
    ``max_spool_bytes``: the images of all of them together, on disk."""

    max_files: int = 2000
    max_image_bytes: int = 20 * 1024 * 1024
    max_inflated_bytes: int = 1024 * 1024 * 1024
    max_queued_per_key: int = 4
    max_queued: int = 32
    max_spool_bytes: int = 4 * 1024 * 1024 * 1024  # all queued jobs' inputs on disk


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, upload: str) -> bytes:
    """A member's bytes, inflated in chunks and never beyond its declared size."""
    out = bytearray()
    with archive.open(member) as f:
        while chunk := f.read(min(READ_CHUNK, member.file_size + 1 - len(out))):
            out += chunk
            if len(out) > member.file_size:
                raise InvalidArgumentError(
                    f"{member.filename} in {upload} inflates beyond the {member.file_size} "
                    "bytes it declares: the archive is damaged or hostile",
                    code="bad_archive",
                )
    return bytes(out)


def spool_uploads(
    uploads: Sequence[Upload], spool: JobSpool, limits: JobLimits, room: int | None = None
) -> None:
    """Write the images of ``uploads`` (zip archives expanded) into ``spool``; refuses the
    whole job when there are more than ``limits.max_files`` images, when one is too large,
    when together they inflate beyond ``limits.max_inflated_bytes``, or beyond ``room``
    (what the other queued jobs leave of the spool's bound: 429 ``too_many_jobs``)."""
    images = 0
    for upload in uploads:
        if not upload.data.startswith(b"PK\x03\x04"):
            images += 1
            _check_count(images, limits)
            _check_room(spool.bytes + len(upload.data), limits, room)
            spool.add(upload.name, upload.data)
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(upload.data))
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir() and m.filename.lower().endswith(IMAGE_SUFFIXES)
            ]
            images += len(members)
            _check_count(images, limits)
            for m in members:
                if m.file_size > limits.max_image_bytes:
                    raise PayloadTooLargeError(
                        f"{m.filename} in {upload.name} is larger than "
                        f"{limits.max_image_bytes} bytes",
                        code="file_too_large",
                    )
                _check_room(spool.bytes + m.file_size, limits, room)
                spool.add(f"{upload.name}/{m.filename}", _read_member(archive, m, upload.name))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise InvalidArgumentError(
                f"{upload.name} is not a readable zip archive: {exc}", code="bad_archive"
            ) from None
        except NotImplementedError as exc:  # compression methods zipfile does not read
            raise InvalidArgumentError(
                f"{upload.name}: {exc}", code="unsupported_archive"
            ) from None
    if not images:
        raise InvalidArgumentError("no images in the upload", code="missing_image")


def _check_room(total: int, limits: JobLimits, room: int | None) -> None:
    if total > limits.max_inflated_bytes:
        raise PayloadTooLargeError(
            f"the images of this job inflate beyond {limits.max_inflated_bytes} bytes",
            code="archive_too_large",
            limit=limits.max_inflated_bytes,
        )
    if room is not None and total > room:
        raise TooManyRequestsError(
            "the queued jobs fill the job spool; retry later",
            code="too_many_jobs",
            retry_after=RETRY_AFTER_S,
        )


def _check_count(images: int, limits: JobLimits) -> None:
    if images > limits.max_files:
        raise PayloadTooLargeError(
            f"at most {limits.max_files} images per job; this one has {images} or more",
            code="too_many_files",
            limit=limits.max_files,
        )


class JobService:
    """Jobs submitted, and one background thread working through them in order."""

    def __init__(
        self, jobs: JobRepository, faces: FaceService, limits: JobLimits, spool_dir: Path
    ) -> None:
        self.jobs, self.faces, self.limits, self.spool_dir = jobs, faces, limits, spool_dir
        self._queue: queue.Queue[tuple[str, str, JobSpool] | None] = queue.Queue()
        self._pending: Counter[str] = Counter()  # jobs queued or running, per key
        self._spooled = 0  # bytes in the spools of those jobs
        self._lock = threading.Lock()
        self.jobs.fail_unfinished({"code": "interrupted", "message": "the service restarted"})
        if removed := clear_spools(spool_dir):
            log.info("removed %d job spools left by the previous run", removed)
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def _claim_slot(self, key: str) -> None:
        with self._lock:
            if self._pending.total() >= self.limits.max_queued:
                raise TooManyRequestsError(
                    f"{self.limits.max_queued} jobs are queued already; retry later",
                    code="too_many_jobs",
                    retry_after=RETRY_AFTER_S,
                )
            if self._pending[key] >= self.limits.max_queued_per_key:
                raise TooManyRequestsError(
                    f"this API key has {self.limits.max_queued_per_key} jobs queued or "
                    "running; wait for one to finish",
                    code="too_many_jobs",
                    retry_after=RETRY_AFTER_S,
                )
            self._pending[key] += 1

    def _release_slot(self, key: str) -> None:
        with self._lock:
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]

    def submit_identify(
        self, uploads: Sequence[Upload], top_k: int, threshold: float | None, caller: Caller
    ) -> Job:
        """Queue the identification of images and zip archives of them (see
        :class:`JobLimits`); refused with 429 ``too_many_jobs`` when the queue is full."""
        key = caller.key_id or ""
        self._claim_slot(key)
        spool = JobSpool(self.spool_dir, new_id())
        try:
            with self._lock:
                room = self.limits.max_spool_bytes - self._spooled
            spool_uploads(uploads, spool, self.limits, room)
            spool.finish()
            if spool.bytes >= CHUNK_BYTES:
                release_memory()  # the inflated members have passed through
            with self._lock:
                self._spooled += spool.bytes
            params = {"top_k": top_k, "threshold": threshold, **caller.to_params()}
            job = self.jobs.create("identify", caller.key_id, spool.count, params)
        except BaseException:
            spool.discard()
            self._release_slot(key)
            raise
        self._queue.put((job.id, key, spool))
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
        while not self._queue.empty():  # jobs never started: their spools go now
            item = self._queue.get_nowait()
            if item is not None:
                item[2].discard()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job_id, key, spool = item
            try:
                self._process(job_id, spool)
            except Exception as exc:  # the job fails, the runner lives on
                log.exception("job %s failed", job_id)
                error = (
                    exc.to_dict()
                    if isinstance(exc, FaceRecError)
                    else {"code": "internal_error", "message": "the job failed"}
                )
                self.jobs.update(job_id, status="failed", error=error, finished_at=now())
            finally:
                spool.discard()
                with self._lock:
                    self._spooled -= spool.bytes
                self._release_slot(key)
            del item, spool  # nothing of the job stays referenced while the next one waits
            release_memory()

    def _process(self, job_id: str, spool: JobSpool) -> None:
        params = self.jobs.get(job_id).params
        caller = Caller.from_params(params)
        top_k, threshold = int(params["top_k"]), params["threshold"]
        self.jobs.update(job_id, status="running")
        results: list[dict[str, Any]] = []
        chunk: list[Upload] = []
        for upload in spool:
            chunk.append(upload)
            last = len(results) + len(chunk) == spool.count
            if last or len(chunk) == CHUNK or sum(len(u.data) for u in chunk) >= CHUNK_BYTES:
                identified = self.faces.identify_many(chunk, caller, top_k, threshold)
                results.extend(r.to_dict() for r in identified)
                self.jobs.update(job_id, done=len(results), results=list(results))
                chunk = []
        self.jobs.update(job_id, status="done", finished_at=now())
