"""Asynchronous jobs: status, progress and results of each (never the uploads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.errors import NotFoundError
from gateway.storage.schema import JobRow, now


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    key_id: str | None  # the API key that submitted it
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
        row.key_id,
        row.status,
        row.total,
        row.done,
        dict(row.params),
        list(row.results),
        row.error,
        row.created_at,
        row.finished_at,
    )


class JobRepository:
    """The ``jobs`` table; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, kind: str, key_id: str | None, total: int, params: dict[str, Any]) -> Job:
        with Session(self.engine) as s, s.begin():
            row = JobRow(kind=kind, key_id=key_id, total=total, params=params, results=[])
            s.add(row)
            s.flush()
            return _job(row)

    def get(self, job_id: str) -> Job:
        with Session(self.engine) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            return _job(row)

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (``status``, ``done``, ``results``, ``error``, ...)."""
        with Session(self.engine) as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    def fail_unfinished(self, error: dict[str, Any]) -> int:
        """Mark every queued or running job failed with ``error``; returns how many."""
        with Session(self.engine) as s, s.begin():
            rows = list(s.scalars(select(JobRow).where(JobRow.status.in_(["queued", "running"]))))
            for row in rows:
                row.status = "failed"
                row.error = error
                row.finished_at = now()
            return len(rows)
