"""The worker side of the job queue: threads that claim jobs from the database, run them a
time slice at a time under a lease with heartbeats, and give them back.

A worker claims the fairest pending job (:meth:`JobRepository.claim`), reads the images
that have no result yet, identifies them a chunk at a time and stores each chunk's results
under its lease, so a job taken over after its worker died resumes at the first image
without a result, and no result is written twice. After ``slice_s`` seconds the job goes
back to the queue, so that another key's job gets its turn. A heartbeat thread renews the
lease while a chunk is being analysed; a job cancelled meanwhile, or taken over after a
lease that ran out, is noticed there and at the next write, and the worker lets it go.
An error the caller should retry (the index or the database unavailable) gives the job
back to be tried again; any other error fails the job.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from facerec.errors import FaceRecError
from gateway.crypto.envelope import open_record
from gateway.memory import release_memory
from gateway.service.identification import IdentificationService
from gateway.service.types import Caller, Upload
from gateway.storage.jobs import Claim, JobRepository, LeaseLostError, input_context
from gateway.storage.processes import process_name

log = logging.getLogger(__name__)

CHUNK = 8  # images analysed together, and how often results are stored ...
CHUNK_BYTES = 32 * 1024 * 1024  # ... or fewer, when their files reach this size together
REAP_EVERY_S = 30.0  # how often abandoned submissions are looked for
RETRY_AFTER_S = 5.0  # a job given back after a retriable error waits this long (locally)


@dataclass(frozen=True)
class WorkerTimes:
    """``lease_s``: how long a claim holds without a heartbeat (a dead worker's job is
    taken over after this); ``slice_s``: how long a worker keeps one job before giving
    it back; ``poll_s``: how often an idle worker looks for work."""

    lease_s: float = 30.0
    slice_s: float = 10.0
    poll_s: float = 1.0


class JobRunner:
    """``threads`` workers of one process over the shared queue."""

    def __init__(
        self,
        jobs: JobRepository,
        identification: IdentificationService,
        times: WorkerTimes,
        threads: int = 1,
        name: str | None = None,
    ) -> None:
        self.jobs, self.identification, self.times = jobs, identification, times
        self.name = name or process_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_reap = 0.0
        self._threads = [
            threading.Thread(target=self._run, name=f"jobs-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """A job was submitted here: look now, not at the next poll."""
        self._wake.set()

    def close(self) -> None:
        """Stop after the chunk in hand; the jobs held go back to the queue."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                claim = self.jobs.claim(self.name, self.times.lease_s)
            except SQLAlchemyError:
                log.warning("the job queue is unreachable; retrying", exc_info=True)
                self._stop.wait(self.times.poll_s * 5)
                continue
            if claim is None:
                self._wake.wait(self.times.poll_s)
                self._wake.clear()
                continue
            try:
                self._work(claim)
            finally:
                release_memory()

    def _reap(self) -> None:
        if time.monotonic() - self._last_reap >= REAP_EVERY_S:
            self._last_reap = time.monotonic()
            if removed := self.jobs.reap_uploads():
                log.warning("removed %d job submissions abandoned during upload", removed)

    def _work(self, claim: Claim) -> None:
        """One time slice of ``claim``'s job."""
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(claim, lost), daemon=True)
        beat.start()
        try:
            outcome = self._slice(claim, lost)
        except LeaseLostError:
            outcome = "lost"
        except SQLAlchemyError:
            log.warning("job %s: the database failed; the lease will run out", claim.job_id)
            outcome = "lost"
        except FaceRecError as exc:
            if exc.retriable:
                log.warning("job %s: %s; giving it back", claim.job_id, exc.message)
                outcome = "retry"
            else:
                outcome = self._end(claim, "failed", exc.to_dict())
        except Exception:  # the job fails, the worker lives on
            log.exception("job %s failed", claim.job_id)
            error = {"code": "internal_error", "message": "the job failed"}
            outcome = self._end(claim, "failed", error)
        finally:
            lost.set()  # stops the heartbeat
            beat.join()
        if outcome in ("slice", "retry"):
            self._give_back(claim)
        if outcome == "retry":
            self._stop.wait(RETRY_AFTER_S)

    def _end(self, claim: Claim, status: str, error: dict[str, Any] | None) -> str:
        try:
            self.jobs.finish(claim, status, error)
        except SQLAlchemyError:
            log.warning("job %s: could not record its end; the lease will run out", claim.job_id)
        return status

    def _give_back(self, claim: Claim) -> None:
        try:
            self.jobs.release(claim)
        except SQLAlchemyError:
            log.warning("job %s: could not give it back; the lease will run out", claim.job_id)

    def _heartbeat(self, claim: Claim, lost: threading.Event) -> None:
        while not lost.wait(self.times.lease_s / 3):
            try:
                if not self.jobs.renew(claim, self.times.lease_s):
                    log.info("job %s is no longer ours (cancelled or taken over)", claim.job_id)
                    lost.set()
            except SQLAlchemyError:
                log.warning("job %s: heartbeat failed", claim.job_id)

    def _slice(self, claim: Claim, lost: threading.Event) -> str:
        """Work on the job until it is done (``done``), its slice is over or this worker
        stops (``slice``), or it is no longer ours (``lost``)."""
        key = self.jobs.data_key(claim)
        params = claim.params
        caller = Caller.from_params(params)
        top_k, threshold, fpir = int(params["top_k"]), params["threshold"], params.get("fpir")
        deadline = time.monotonic() + self.times.slice_s
        while True:
            if lost.is_set():
                return "lost"
            if self._stop.is_set() or time.monotonic() >= deadline:
                return "slice"
            stored = self.jobs.next_inputs(claim.job_id, CHUNK, CHUNK_BYTES)
            if not stored:
                return self._end(claim, "done", None)
            indices = [s.idx for s in stored]
            uploads = [
                Upload(s.name, open_record(key, s.data, input_context(claim.job_id, s.idx)))
                for s in stored
            ]
            del stored
            results = self.identification.identify_many(uploads, caller, top_k, threshold, fpir)
            del uploads
            done = [(i, r.to_dict()) for i, r in zip(indices, results, strict=True)]
            self.jobs.record(claim, done, self.times.lease_s)
