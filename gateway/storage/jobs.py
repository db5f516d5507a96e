"""The durable job queue: jobs, their sealed inputs and their results per image, shared by
every process of a deployment through the database.

A job is written ``uploading`` while its inputs arrive (under a short lease that the
submitting process renews), then ``queued``. A worker **claims** a job: one conditional
``UPDATE`` that sets the worker's name, a fresh lease token and ``lease_until``, chosen by
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (workers never wait on each other's
choice) among the jobs that are queued, or running under a lease that has expired. The
worker renews its lease (heartbeats) while it works and writes the results of each chunk
of images in one transaction that first checks it still holds the lease: a worker that
lost its job (dead, cut off, or the job was cancelled) writes nothing, and each image's
result is a row keyed by (job, image), so none is written twice. A worker gives the job
back after a time slice; the next claim goes to the namespace, then the API key, served
longest ago, so one key's long jobs do not starve another's.

Limits hold across processes: the count of active jobs (per key, in all) and the bytes of
their inputs are checked under a lock (:func:`gateway.storage.locks.transaction_lock`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from gateway.crypto.envelope import Keyring, WrappedKey
from gateway.errors import NotFoundError
from gateway.storage.locks import in_transaction, transaction_lock
from gateway.storage.schema import JobInputRow, JobResultRow, JobRow, now, rowcount

ACTIVE = ("uploading", "queued", "running")  # count against the limits
PENDING = ("queued", "running")  # a worker may claim them (once no lease holds them)
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    key_id: str | None  # the API key that submitted it
    status: str  # queued | running | done | failed | cancelled
    total: int
    done: int
    params: dict[str, Any]
    results: list[Any]
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None
    namespace: str | None = None
    owner: str | None = None  # the worker holding it now
    claims: int = 0  # how many times a worker took it (slices and take-overs)


@dataclass(frozen=True)
class Claim:
    """A job held by one worker until ``lease`` is renewed no more."""

    job_id: str
    lease: str
    owner: str
    params: dict[str, Any]
    total: int
    data_key: WrappedKey


@dataclass(frozen=True)
class StoredInput:
    idx: int
    name: str
    data: bytes  # sealed


class LeaseLostError(Exception):
    """The job is no longer this worker's: cancelled, finished, or taken over."""


class QueueFullError(Exception):
    """Submitting would pass a limit: ``which`` is ``key``, ``total``, ``bytes`` or
    ``work``."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


def _job(row: JobRow, results: list[Any]) -> Job:
    return Job(
        row.id,
        row.kind,
        row.key_id,
        row.status,
        row.total,
        row.done,
        dict(row.params),
        results,
        row.error,
        row.created_at,
        row.finished_at,
        row.namespace,
        row.owner,
        row.claims,
    )


def input_context(job_id: str, idx: int) -> str:
    """What a sealed input is bound to (its job and position)."""
    return f"job-input/{job_id}/{idx}"


def key_context(job_id: str) -> str:
    """What a job's wrapped data key is bound to."""
    return f"job/{job_id}"


class JobRepository:
    """The ``jobs``, ``job_inputs`` and ``job_results`` tables; each method is one
    transaction."""

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self.engine, self.keyring = engine, keyring

    def _retrying(self, work: Callable[[Session], T]) -> T:
        return in_transaction(self.engine, work)

    # -- submission ---------------------------------------------------------------------
    def create(
        self,
        kind: str,
        key_id: str | None,
        namespace: str | None,
        params: dict[str, Any],
        data_key: bytes,
        max_per_key: int,
        max_total: int,
        upload_lease_s: float,
    ) -> Job:
        """A new job, ``uploading``; :class:`QueueFullError` when the key already has
        ``max_per_key`` active jobs or the deployment ``max_total``."""

        def work(s: Session) -> Job:
            job_id = uuid.uuid4().hex
            wrapped = self.keyring.wrap(data_key, key_context(job_id))
            row = JobRow(
                id=job_id,
                kind=kind,
                key_id=key_id,
                namespace=namespace,
                status="uploading",
                params=params,
                results=[],
                lease_until=now() + timedelta(seconds=upload_lease_s),
                dek_key_id=wrapped.key_id,
                dek_blob=wrapped.blob,
            )
            s.add(row)
            s.flush()  # on SQLite, this write takes the database's lock
            transaction_lock(s, "jobs")
            active = select(func.count()).select_from(JobRow).where(JobRow.status.in_(ACTIVE))
            if (s.scalar(active) or 0) > max_total:
                raise QueueFullError("total")
            if (s.scalar(active.where(JobRow.key_id == key_id)) or 0) > max_per_key:
                raise QueueFullError("key")
            return _job(row, [])

        return self._retrying(work)

    def add_input(
        self,
        job_id: str,
        idx: int,
        name: str,
        size: int,
        sealed: bytes,
        max_bytes: int,
        upload_lease_s: float,
        pixels: int = 0,
        max_key_pixels: int | None = None,
    ) -> None:
        """Store one sealed input of an ``uploading`` job; :class:`QueueFullError` when the
        inputs of all active jobs would pass ``max_bytes`` (``bytes``), or the ``pixels``
        of the submitting key's active jobs ``max_key_pixels`` (``work``)."""

        def work(s: Session) -> None:
            changed = rowcount(
                s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.status == "uploading")
                    .values(
                        input_bytes=JobRow.input_bytes + size,
                        input_pixels=JobRow.input_pixels + pixels,
                        lease_until=now() + timedelta(seconds=upload_lease_s),
                    )
                )
            )
            if changed != 1:
                raise NotFoundError(f"job {job_id} is no longer being submitted")
            transaction_lock(s, "jobs")
            total = s.scalar(select(func.sum(JobRow.input_bytes)).where(JobRow.status.in_(ACTIVE)))
            if (total or 0) > max_bytes:
                raise QueueFullError("bytes")
            if max_key_pixels is not None:
                key_id = select(JobRow.key_id).where(JobRow.id == job_id).scalar_subquery()
                held = s.scalar(
                    select(func.sum(JobRow.input_pixels)).where(
                        JobRow.status.in_(ACTIVE), JobRow.key_id == key_id
                    )
                )
                if (held or 0) > max_key_pixels:
                    raise QueueFullError("work")
            s.add(JobInputRow(job_id=job_id, idx=idx, name=name, size=size, data=sealed))

        self._retrying(work)

    def enqueue(self, job_id: str, total: int) -> Job:
        """Its inputs are all stored: workers may take it."""

        def work(s: Session) -> Job:
            row = s.get(JobRow, job_id)
            if row is None or row.status != "uploading":
                raise NotFoundError(f"job {job_id} is no longer being submitted")
            row.status, row.total, row.lease_until = "queued", total, None
            return _job(row, [])

        return self._retrying(work)

    def discard(self, job_id: str) -> None:
        """Remove a job whose submission failed, inputs included."""
        self._retrying(lambda s: s.execute(delete(JobRow).where(JobRow.id == job_id)))

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: str, with_results: bool = True, key_id: str | None = None) -> Job:
        """A job (only when ``key_id`` submitted it, if given: the owner is in the query, so
        another key's job costs what an unknown id does)."""
        with Session(self.engine) as s:
            query = select(JobRow).where(JobRow.id == job_id)
            if key_id is not None:
                query = query.where(JobRow.key_id == key_id)
            row = s.scalars(query).first()
            if row is None or row.status == "uploading":
                raise NotFoundError(f"no job {job_id}")
            results = list(row.results)
            if with_results:
                query = (
                    select(JobResultRow.result)
                    .where(JobResultRow.job_id == job_id)
                    .order_by(JobResultRow.idx)
                )
                results += list(s.scalars(query))
            return _job(row, results)

    def active(self) -> list[Job]:
        """Jobs uploading, queued or running, oldest first (without results)."""
        with Session(self.engine) as s:
            rows = s.scalars(
                select(JobRow).where(JobRow.status.in_(ACTIVE)).order_by(JobRow.created_at)
            )
            return [_job(r, []) for r in rows]

    # -- workers ---------------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float) -> Claim | None:
        """Take the next job for ``owner`` under a new lease: queued, or running under a
        lease that expired; the namespace, then the key, served longest ago first."""
        other = aliased(JobRow)

        def last_turn(column: Any) -> Any:
            return (
                select(func.max(other.turn_at))
                .where(getattr(other, column) == getattr(JobRow, column))
                .where(other.status.in_(ACTIVE))
                .scalar_subquery()
            )

        def work(s: Session) -> Claim | None:
            at = now()
            query = (
                select(JobRow)
                .where(JobRow.status.in_(PENDING), JobRow.dek_blob.is_not(None))
                .where((JobRow.lease_until.is_(None)) | (JobRow.lease_until < at))
                .order_by(
                    last_turn("namespace").asc().nulls_first(),
                    last_turn("key_id").asc().nulls_first(),
                    JobRow.created_at,
                )
                .limit(1)
                .with_for_update(skip_locked=True, of=JobRow)
            )
            row = s.scalars(query).first()
            if row is None:
                return None
            lease = uuid.uuid4().hex
            taken = rowcount(
                s.execute(
                    update(JobRow)
                    .where(JobRow.id == row.id, JobRow.status.in_(PENDING))
                    .where((JobRow.lease_until.is_(None)) | (JobRow.lease_until < at))
                    .values(
                        status="running",
                        owner=owner,
                        lease=lease,
                        lease_until=at + timedelta(seconds=lease_s),
                        turn_at=at,
                        claims=JobRow.claims + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            if taken != 1:
                return None  # another worker (SQLite) took it first: try again later
            assert row.dek_key_id is not None and row.dek_blob is not None
            return Claim(
                row.id,
                lease,
                owner,
                dict(row.params),
                row.total,
                WrappedKey(row.dek_key_id, row.dek_blob),
            )

        return self._retrying(work)

    def data_key(self, claim: Claim) -> bytes:
        return self.keyring.unwrap(claim.data_key, key_context(claim.job_id))

    def next_inputs(self, job_id: str, limit: int, max_bytes: int) -> list[StoredInput]:
        """Up to ``limit`` inputs without a result yet, in order, fewer when together
        they pass ``max_bytes`` (always at least one)."""
        with Session(self.engine) as s:
            done = select(JobResultRow.idx).where(JobResultRow.job_id == job_id)
            sizes = s.execute(
                select(JobInputRow.idx, JobInputRow.size)
                .where(JobInputRow.job_id == job_id, JobInputRow.idx.not_in(done))
                .order_by(JobInputRow.idx)
                .limit(limit)
            ).all()
            chosen: list[int] = []
            total = 0
            for idx, size in sizes:
                if chosen and total + size > max_bytes:
                    break
                chosen.append(idx)
                total += size
            if not chosen:
                return []
            rows = s.scalars(
                select(JobInputRow)
                .where(JobInputRow.job_id == job_id, JobInputRow.idx.in_(chosen))
                .order_by(JobInputRow.idx)
            )
            return [StoredInput(r.idx, r.name, r.data) for r in rows]

    def _held(self, s: Session, claim: Claim, lease_s: float, **values: Any) -> None:
        """Renew ``claim``'s lease (and set ``values``) or raise :class:`LeaseLostError`."""
        changed = rowcount(
            s.execute(
                update(JobRow)
                .where(
                    JobRow.id == claim.job_id,
                    JobRow.lease == claim.lease,
                    JobRow.status == "running",
                )
                .values({"lease_until": now() + timedelta(seconds=lease_s), **values})
                .execution_options(synchronize_session=False)
            )
        )
        if changed != 1:
            raise LeaseLostError(claim.job_id)

    def renew(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat: extend the lease; False when it is lost."""
        try:
            self._retrying(lambda s: self._held(s, claim, lease_s))
        except LeaseLostError:
            return False
        return True

    def record(
        self, claim: Claim, results: Sequence[tuple[int, dict[str, Any]]], lease_s: float
    ) -> None:
        """Store the results of some images, in one transaction that first checks the lease
        (:class:`LeaseLostError` and nothing written otherwise)."""

        def work(s: Session) -> None:
            self._held(s, claim, lease_s, done=JobRow.done + len(results))
            s.add_all(JobResultRow(job_id=claim.job_id, idx=i, result=r) for i, r in results)

        self._retrying(work)

    def release(self, claim: Claim) -> None:
        """Give the job back (end of a time slice, or shutting down): another worker, or
        this one, may claim it at once."""

        def work(s: Session) -> None:
            s.execute(
                update(JobRow)
                .where(JobRow.id == claim.job_id, JobRow.lease == claim.lease)
                .values(owner=None, lease=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )

        self._retrying(work)

    def finish(self, claim: Claim, status: str, error: dict[str, Any] | None = None) -> bool:
        """End a job held by ``claim``: its inputs and data key go; False when the lease
        was lost meanwhile (nothing changed)."""

        def work(s: Session) -> bool:
            try:
                self._held(s, claim, 0, **_ended(status, error))
            except LeaseLostError:
                return False
            s.execute(delete(JobInputRow).where(JobInputRow.job_id == claim.job_id))
            return True

        return self._retrying(work)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not ended (its inputs and data key go at once; results so
        far stay); a job that ended is returned as it is."""

        def work(s: Session) -> None:
            changed = rowcount(
                s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.status.in_(PENDING))
                    .values(**_ended("cancelled", None))
                    .execution_options(synchronize_session=False)
                )
            )
            if changed:
                s.execute(delete(JobInputRow).where(JobInputRow.job_id == job_id))

        self._retrying(work)
        return self.get(job_id, with_results=False)

    def reap_uploads(self) -> int:
        """Remove jobs whose submitting process died during the upload (their lease ran
        out); returns how many."""

        def work(s: Session) -> int:
            result = s.execute(
                delete(JobRow)
                .where(JobRow.status == "uploading", JobRow.lease_until < now())
                .execution_options(synchronize_session=False)
            )
            return rowcount(result)

        return self._retrying(work)

    def rewrap_keys(self, s: Session) -> int:
        """Re-wrap the data keys of active jobs under the keyring's current master key,
        inside the caller's transaction ``s``; returns how many changed."""
        changed = 0
        for row in s.scalars(select(JobRow).where(JobRow.dek_blob.is_not(None))):
            assert row.dek_key_id is not None and row.dek_blob is not None
            old = WrappedKey(row.dek_key_id, row.dek_blob)
            new = self.keyring.rewrap(old, key_context(row.id))
            if new != old:
                row.dek_key_id, row.dek_blob = new.key_id, new.blob
                changed += 1
        return changed


def _ended(status: str, error: dict[str, Any] | None) -> dict[str, Any]:
    """The columns of a job that ended: no owner, no lease, no data key."""
    return {
        "status": status,
        "error": error,
        "finished_at": now(),
        "owner": None,
        "lease": None,
        "lease_until": None,
        "dek_key_id": None,
        "dek_blob": None,
    }
