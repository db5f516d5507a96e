"""The stored audit log: one row per event, in sequence; rows are only ever appended.

The chain itself (what each event's value covers) is :mod:`gateway.audit.chain`; this
module stores the events :class:`gateway.audit.log.AuditLog` builds.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from gateway.audit.chain import AuditEvent
from gateway.errors import ConflictError
from gateway.storage.connections import driver_rows
from gateway.storage.locks import transaction_lock
from gateway.storage.schema import AuditRow

OUTAGE_S = 10.0  # how long an append waits for a database that does not answer


# the events, as arrays: one statement text whatever their number, in psycopg's own form
# (every request appends: storage/connections.py, driver_rows)
_INSERT_AFTER = (
    "INSERT INTO audit_events (seq, body) "
    "SELECT seq, body FROM unnest(%(seqs)s::integer[], %(bodies)s::text[]) "
    "AS new (seq, body) "
    "WHERE (SELECT max(seq) FROM audit_events) = %(last)s "
    "RETURNING seq"
)


class AuditRepository:
    """The ``audit_events`` table."""

    def __init__(self, engine: Engine, reads: Engine | None = None) -> None:
        self.engine = engine
        # PostgreSQL in autocommit (storage/connections.py): appends after this process's
        # own go in one statement (:meth:`_append_after`)
        self.reads = reads or engine
        self._lock = threading.Lock()
        self._last: AuditEvent | None = None  # the last event this process stored

    def append(self, follow: Callable[[AuditEvent | None], list[AuditEvent]]) -> list[AuditEvent]:
        """Store the events ``follow`` chains onto the last stored one (None for the first),
        in one transaction: a group of appends costs one lock and one commit.

        Appends from this process are serialised by a lock, and on PostgreSQL appends from
        every process by an advisory lock held for the transaction. Elsewhere (SQLite) a
        process appending at the same moment makes the insert of the same sequence number
        fail, and this one retries with the new last event. Either way the events form one
        chain. On PostgreSQL an append right after this process's own is one conditional
        statement (:meth:`_append_after`); the locked path runs when another process has
        appended since. While the database does not answer (a restart), the append is
        tried again for up to ``OUTAGE_S`` seconds, so that an audited action is not lost
        to a blip.
        """
        deadline = time.monotonic() + OUTAGE_S
        with self._lock:
            for attempt in range(50):
                try:
                    if self._last is not None and self.reads is not self.engine:
                        done = self._append_after(self._last, follow)
                        self._last = None  # stored or not, the next try reads the last
                        if done is not None:
                            self._last = done[-1] if done else None
                            return done
                    # plain statements, no ORM unit of work: every request appends
                    with self.engine.begin() as c:
                        transaction_lock(c, "audit")  # PostgreSQL: replicas take turns
                        last_body = c.scalar(
                            select(AuditRow.body).order_by(AuditRow.seq.desc()).limit(1)
                        )
                        last = AuditEvent(**json.loads(last_body)) if last_body else None
                        events = follow(last)
                        if events:
                            c.execute(
                                insert(AuditRow),
                                [
                                    {
                                        "seq": e.seq,
                                        "body": json.dumps(e.__dict__, sort_keys=True),
                                    }
                                    for e in events
                                ],
                            )
                    self._last = events[-1] if events else None
                    return events
                except SqlIntegrityError:
                    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                except (OperationalError, InterfaceError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(random.uniform(0.05, 0.25))
        raise ConflictError("could not append to the audit log", code="audit_contention")

    def _append_after(
        self, last: AuditEvent, follow: Callable[[AuditEvent | None], list[AuditEvent]]
    ) -> list[AuditEvent] | None:
        """The events ``follow`` chains onto ``last``, stored by one statement that inserts
        them only while ``last`` is still the last stored event (no other process has
        appended since, nothing was cut); None when it is not (or another process's insert
        of the same sequence number won), and nothing was stored. One round trip instead
        of five (begin, lock, read, insert, commit)."""
        events = follow(last)
        if not events:
            return events
        params = {
            "seqs": [e.seq for e in events],
            "bodies": [json.dumps(e.__dict__, sort_keys=True) for e in events],
            "last": last.seq,
        }
        try:
            stored = len(driver_rows(self.reads, _INSERT_AFTER, params))
        except SqlIntegrityError:
            return None
        return events if stored == len(events) else None

    def events(self, after: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events with ``seq > after``, oldest first."""
        with Session(self.engine) as s:
            query = select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq)
            if limit is not None:
                query = query.limit(limit)
            return [AuditEvent(**json.loads(r.body)) for r in s.scalars(query)]

    def event(self, seq: int) -> AuditEvent | None:
        with Session(self.engine) as s:
            row = s.get(AuditRow, seq)
            return None if row is None else AuditEvent(**json.loads(row.body))

    def last(self) -> AuditEvent | None:
        with Session(self.engine) as s:
            row = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)).first()
            return None if row is None else AuditEvent(**json.loads(row.body))

    def last_seq(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.max(AuditRow.seq))) or 0)
