"""Asynchronous identification jobs: many images in, a job id out, progress and results on
request, from any replica.

Submission (this module) unpacks the upload as it is stored: each image is sealed with a
data key of the job's own (AES-256-GCM, bound to the job and the image's position; the key
is wrapped by the master key like a subject's) and written to the database, where every
worker of the deployment can read it (:mod:`gateway.storage.jobs`). No raw image reaches a
disk, and nothing of a queued job is held in memory. Zip archives are checked from their
end-of-central-directory record before Python's ``zipfile`` parses the directory, and
members are inflated in chunks: one that inflates beyond its declared size, or an archive
that inflates beyond the job's total, is refused without inflating the rest. Queued jobs
are bounded per API key and in total, and their inputs in bytes, across all replicas (429
with ``Retry-After``). Workers run the jobs (:mod:`gateway.service.job_worker`).
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from facerec.errors import ImageError, InvalidArgumentError
from facerec.imaging.decode import DecodeLimits, probe_image
from gateway.auth.throttle import TooManyRequestsError
from gateway.crypto.envelope import new_data_key, seal_record
from gateway.errors import PayloadTooLargeError
from gateway.memory import release_memory
from gateway.service.identification import IdentificationService
from gateway.service.types import Audit, Caller, Job, Upload
from gateway.storage.jobs import JobRepository, QueueFullError, input_context

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
READ_CHUNK = 64 * 1024  # zip members are inflated this much at a time
RETRY_AFTER_S = 30  # what a refused submission is told to wait
UPLOAD_LEASE_S = 120.0  # a submission whose process stops renewing this is removed
ENTRY_OVERHEAD = 4  # archive entries allowed per image (folders, other files)
TRIM_AFTER_BYTES = 32 * 1024 * 1024  # give memory back after submissions this large


@dataclass(frozen=True)
class JobLimits:
    """``max_files``: images per job; ``max_image_bytes``: per image (a zip member's
    inflated size); ``max_inflated_bytes``: all images of a job together, inflated;
    ``max_queued_per_key`` and ``max_queued``: jobs waiting or running;
    ``max_spool_bytes``: the inputs of all of them together, stored (all replicas);
    ``max_job_pixels``: the work of one job, as the pixels its images' headers declare;
    ``max_key_pixels``: that of one key's jobs waiting or running together."""

    max_files: int = 2000
    max_image_bytes: int = 20 * 1024 * 1024
    max_inflated_bytes: int = 1024 * 1024 * 1024
    max_queued_per_key: int = 4
    max_queued: int = 32
    max_spool_bytes: int = 4 * 1024 * 1024 * 1024
    max_job_pixels: int = 8_000_000_000
    max_key_pixels: int = 16_000_000_000


def header_pixels(data: bytes) -> int:
    """The pixels an image's header declares: the work it will cost (0 for one that
    cannot be read; it fails at once when the job runs)."""
    try:
        return probe_image(data, UNBOUNDED).pixels
    except ImageError:
        return 0


UNBOUNDED = DecodeLimits(max_bytes=1 << 62, max_pixels=1 << 62, bomb_ratio=1 << 62)


class ImageSink:
    """Where :func:`spool_uploads` puts the images of a job (``add``, with the pixels its
    header declares), counting them."""

    def __init__(self, add: Callable[[int, str, bytes, int], None]) -> None:
        self._add = add
        self.count = 0
        self.bytes = 0
        self.pixels = 0

    def add(self, name: str, data: bytes) -> None:
        pixels = header_pixels(data)
        self._add(self.count, name, data, pixels)
        self.count += 1
        self.bytes += len(data)
        self.pixels += pixels


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


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # one central directory record (before its name)


def central_directory(data: bytes) -> tuple[int, int, int]:
    """(entries declared, offset, bytes) of a zip archive's central directory, found from
    its end record (zip64 included) where Python's ``zipfile`` finds it, without reading
    the directory; :class:`InvalidArgumentError` ``bad_archive`` when there is no end
    record."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_535 - _EOCD.size))
    if end < 0 or end + _EOCD.size > len(data):
        raise InvalidArgumentError("not a zip archive: no end record", code="bad_archive")
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(data, end)
    before = end  # the directory ends where the (zip64) end records begin
    locator = end - _ZIP64_LOCATOR.size
    record = locator - _ZIP64_EOCD.size
    zip64 = data[locator : locator + 4] == b"PK\x06\x07"
    if zip64 and record >= 0 and data[record : record + 4] == b"PK\x06\x06":
        fields = _ZIP64_EOCD.unpack_from(data, record)  # ..., entries on this disk, in
        entries, size, before = fields[7], fields[8], record  # all, directory size, offset
    return int(entries), before - int(size), int(size)


def _check_directory(data: bytes, upload: str, limits: JobLimits) -> None:
    """Refuse an archive whose directory lists more entries than a job may hold, before
    ``zipfile`` builds an object per entry (a directory bomb): the records are counted
    where they lie, and the count stops past the bound."""
    most = limits.max_files * ENTRY_OVERHEAD
    entries, pos, size = central_directory(data)
    counted, stop = 0, min(len(data), pos + size)
    if pos < 0:
        raise InvalidArgumentError(f"{upload}: damaged central directory", code="bad_archive")
    while pos + _CENTRAL.size <= stop and counted <= most:
        fields = _CENTRAL.unpack_from(data, pos)
        if fields[0] != b"PK\x01\x02":
            break
        counted += 1
        pos += _CENTRAL.size + fields[10] + fields[11] + fields[12]
    if max(counted, min(entries, most + 1)) > most:
        raise PayloadTooLargeError(
            f"{upload} lists more than {most} entries; a job holds at most "
            f"{limits.max_files} images",
            code="too_many_files",
            limit=limits.max_files,
        )


def spool_uploads(uploads: Sequence[Upload], sink: ImageSink, limits: JobLimits) -> None:
    """Put the images of ``uploads`` (zip archives expanded) into ``sink``; refuses the
    whole job when there are more than ``limits.max_files`` images, when one is too large,
    or when together they inflate beyond ``limits.max_inflated_bytes``."""
    images = 0
    for upload in uploads:
        if not upload.data.startswith(b"PK\x03\x04"):
            images += 1
            _check_count(images, limits)
            _check_image(upload.name, len(upload.data), limits)
            _check_total(sink.bytes + len(upload.data), limits)
            sink.add(upload.name, upload.data)
            _check_work(sink.pixels, limits)
            continue
        try:
            _check_directory(upload.data, upload.name, limits)
            archive = zipfile.ZipFile(io.BytesIO(upload.data))
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir() and m.filename.lower().endswith(IMAGE_SUFFIXES)
            ]
            images += len(members)
            _check_count(images, limits)
            for m in members:
                _check_image(f"{m.filename} in {upload.name}", m.file_size, limits)
                _check_total(sink.bytes + m.file_size, limits)
                sink.add(f"{upload.name}/{m.filename}", _read_member(archive, m, upload.name))
                _check_work(sink.pixels, limits)
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


def _check_total(total: int, limits: JobLimits) -> None:
    if total > limits.max_inflated_bytes:
        raise PayloadTooLargeError(
            f"the images of this job inflate beyond {limits.max_inflated_bytes} bytes",
            code="archive_too_large",
            limit=limits.max_inflated_bytes,
        )


def _check_image(name: str, size: int, limits: JobLimits) -> None:
    """One image (a file sent as is, or a zip member's declared size) within the limit."""
    if size > limits.max_image_bytes:
        raise PayloadTooLargeError(
            f"{name} is larger than {limits.max_image_bytes} bytes", code="file_too_large"
        )


def _check_work(pixels: int, limits: JobLimits) -> None:
    if pixels > limits.max_job_pixels:
        raise PayloadTooLargeError(
            f"the images of this job hold more than {limits.max_job_pixels:,} pixels of "
            "work; split it into smaller jobs, or send smaller images",
            code="job_too_large",
            limit=limits.max_job_pixels,
        )


def _check_count(images: int, limits: JobLimits) -> None:
    if images > limits.max_files:
        raise PayloadTooLargeError(
            f"at most {limits.max_files} images per job; this one has {images} or more",
            code="too_many_files",
            limit=limits.max_files,
        )


def _queue_full(which: str, limits: JobLimits) -> TooManyRequestsError:
    message = {
        "key": f"this API key has {limits.max_queued_per_key} jobs queued or running; "
        "wait for one to finish",
        "total": f"{limits.max_queued} jobs are queued already; retry later",
        "bytes": "the queued jobs fill the job store; retry later",
        "work": f"this API key's jobs queued or running hold more than "
        f"{limits.max_key_pixels:,} pixels of work; wait for one to finish",
    }[which]
    return TooManyRequestsError(message, code="too_many_jobs", retry_after=RETRY_AFTER_S)


class JobService:
    """Jobs submitted, read and cancelled (any replica); workers run them."""

    def __init__(
        self,
        jobs: JobRepository,
        identification: IdentificationService,
        audit: Audit,
        limits: JobLimits,
        on_submit: Callable[[], None] | None = None,
    ) -> None:
        self.jobs, self.identification, self.audit = jobs, identification, audit
        self.limits = limits
        self.on_submit = on_submit  # wakes this process's workers, if it runs any

    def submit_identify(
        self,
        uploads: Sequence[Upload],
        top_k: int,
        threshold: float | None,
        caller: Caller,
        fpir: float | None = None,
    ) -> Job:
        """Queue the identification of images and zip archives of them (see
        :class:`JobLimits`); refused with 429 ``too_many_jobs`` when the queue is full.
        The operating point (``fpir``/``threshold``) is checked now and fixed when the job
        runs, for the gallery's size then."""
        self.identification.operating_point(fpir, threshold, caller)  # refuse a bad one first
        params = {"top_k": top_k, "threshold": threshold, "fpir": fpir, **caller.to_params()}
        data_key = new_data_key()
        limits = self.limits
        try:
            job = self.jobs.create(
                "identify",
                caller.key_id,
                caller.namespace,
                params,
                data_key,
                limits.max_queued_per_key,
                limits.max_queued,
                UPLOAD_LEASE_S,
            )
        except QueueFullError as full:
            raise _queue_full(full.which, limits) from None

        def store(idx: int, name: str, data: bytes, pixels: int) -> None:
            sealed = seal_record(data_key, data, input_context(job.id, idx))
            self.jobs.add_input(
                job.id,
                idx,
                name,
                len(data),
                sealed,
                limits.max_spool_bytes,
                UPLOAD_LEASE_S,
                pixels,
                limits.max_key_pixels,
            )

        sink = ImageSink(store)
        try:
            spool_uploads(uploads, sink, limits)
            queued = self.jobs.enqueue(job.id, sink.count)
        except QueueFullError as full:
            self.jobs.discard(job.id)
            raise _queue_full(full.which, limits) from None
        except BaseException:
            self.jobs.discard(job.id)
            raise
        finally:
            if sink.bytes >= TRIM_AFTER_BYTES:
                release_memory()  # the inflated members have passed through
        if self.on_submit is not None:
            self.on_submit()
        return queued

    def get(self, job_id: str, caller: Caller, with_results: bool = True) -> Job:
        """A job, with its results so far; only its owner (or an admin) may see it: to
        anyone else it does not exist (404, as an unknown id)."""
        owner = None if caller.role == "admin" else caller.key_id or ""
        return self.jobs.get(job_id, with_results, key_id=owner)

    def cancel(self, job_id: str, caller: Caller) -> Job:
        """Cancel a job that has not ended (its inputs are deleted at once; a worker
        running it stops after the images in hand). A job that ended is left as it is."""
        before = self.get(job_id, caller, with_results=False)
        job = self.jobs.cancel(job_id)
        if job.status == "cancelled" and before.status != "cancelled":
            self.audit("job_cancel", "ok", caller, target=job_id)
        return job
