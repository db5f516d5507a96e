"""Deployment-wide tasks (the index repair) run once by whichever process gets there
first: the ``maintenance`` table records when each last ran, read and written under the
task's lock (:func:`gateway.storage.locks.session_lock`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.storage.schema import MaintenanceRow, now


class MaintenanceRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def last_run(self, name: str) -> datetime | None:
        with Session(self.engine) as s:
            row = s.get(MaintenanceRow, name)
            return None if row is None else row.done_at

    def ran(self, name: str, by: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(MaintenanceRow, name)
            if row is None:
                s.add(MaintenanceRow(name=name, done_at=now(), by=by, runs=1))
            else:
                row.done_at, row.by, row.runs = now(), by, row.runs + 1
