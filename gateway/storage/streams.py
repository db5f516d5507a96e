"""Server-side streams in the database: their definitions, the worker running each under a
lease, their status, and their recent events, so that any replica lists them and serves
their events, and another worker takes a stream over when its owner dies.

A stream is claimed like a job (:mod:`gateway.storage.jobs`): a conditional ``UPDATE``
that sets the worker, a fresh lease token and ``lease_until``, among the streams that
should run, have not ended, and are held by no live lease (``SKIP LOCKED`` on PostgreSQL).
The owner renews the lease every second with the stream's figures (:meth:`beat`), and
writes each event under its lease (:meth:`publish`), numbered on from the last one
stored, so a stream taken over goes on with the next number. Deleting a stream first asks
its owner to stop (``desired = stop``); the owner ends its tracks, writes their events and
gives the lease back; then the row goes, with its events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.errors import NotFoundError
from gateway.storage.locks import in_transaction, transaction_lock
from gateway.storage.schema import StreamEventRow, StreamRow, now, rowcount

FINISHED = ("ended", "failed")
T = TypeVar("T")


@dataclass(frozen=True)
class StoredStream:
    id: str
    key_id: str | None
    role: str | None
    namespace: str | None
    gallery: str | None
    label: str
    spec: dict[str, Any]
    sealed_source: bytes
    shown_source: str
    created_at: datetime
    desired: str
    state: str
    owner: str | None
    lease_until: datetime | None
    stats: dict[str, Any]
    last_error: str | None
    events: int
    claims: int


@dataclass(frozen=True)
class StreamLease:
    """A stream held by one worker: the stream as claimed (``stream.events`` is the last
    event number stored then) and the claim's token."""

    stream: StoredStream
    lease: str


def _stream(row: StreamRow) -> StoredStream:
    return StoredStream(
        row.id,
        row.key_id,
        row.role,
        row.namespace,
        row.gallery,
        row.label,
        dict(row.spec),
        row.source,
        row.shown_source,
        row.created_at,
        row.desired,
        row.state,
        row.owner,
        row.lease_until,
        dict(row.stats or {}),
        row.last_error,
        row.events,
        row.claims,
    )


class TooManyStreamsStored(Exception):  # noqa: N818  (a signal, raised and caught here)
    pass


class StreamRepository:
    """The ``streams`` and ``stream_events`` tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _retrying(self, work: Callable[[Session], T]) -> T:
        return in_transaction(self.engine, work)

    # -- the API's side ----------------------------------------------------------------------
    def create(
        self,
        stream_id: str,
        values: dict[str, Any],
        max_active: int,
    ) -> StoredStream:
        """Store a stream (``values``: the columns); :class:`TooManyStreamsStored` when
        ``max_active`` streams that have not ended exist already (in all replicas). Of the
        streams that ended, the newest ``max_active`` stay listed; older ones go."""

        def work(s: Session) -> StoredStream:
            row = StreamRow(id=stream_id, **values)
            s.add(row)
            s.flush()  # on SQLite this write takes the database's lock
            transaction_lock(s, "streams")
            active = s.scalar(
                select(func.count())
                .select_from(StreamRow)
                .where(StreamRow.state.not_in(FINISHED), StreamRow.desired == "run")
            )
            if (active or 0) > max_active:
                raise TooManyStreamsStored()
            ended = select(StreamRow.id).where(StreamRow.state.in_(FINISHED))
            old = ended.order_by(StreamRow.created_at.desc()).offset(max_active)
            s.execute(delete(StreamRow).where(StreamRow.id.in_(list(s.scalars(old)))))
            return _stream(row)

        return self._retrying(work)

    def get(self, stream_id: str) -> StoredStream:
        with Session(self.engine) as s:
            row = s.get(StreamRow, stream_id)
            if row is None:
                raise NotFoundError(f"no stream {stream_id}")
            return _stream(row)

    def all(self) -> list[StoredStream]:
        with Session(self.engine) as s:
            rows = s.scalars(select(StreamRow).order_by(StreamRow.created_at))
            return [_stream(r) for r in rows]

    def request_stop(self, stream_id: str) -> None:
        def work(s: Session) -> int:
            return rowcount(
                s.execute(update(StreamRow).where(StreamRow.id == stream_id).values(desired="stop"))
            )

        if not self._retrying(work):
            raise NotFoundError(f"no stream {stream_id}")

    def delete(self, stream_id: str) -> None:
        self._retrying(lambda s: s.execute(delete(StreamRow).where(StreamRow.id == stream_id)))

    def events(self, stream_id: str, after: int, limit: int = 200) -> list[dict[str, Any]]:
        """Stored events after ``after``, oldest first."""
        with Session(self.engine) as s:
            rows = s.scalars(
                select(StreamEventRow.body)
                .where(StreamEventRow.stream_id == stream_id, StreamEventRow.seq > after)
                .order_by(StreamEventRow.seq)
                .limit(limit)
            )
            return list(rows)

    # -- the workers' side -------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float, limit: int) -> list[StreamLease]:
        """Take up to ``limit`` streams that should run, have not ended and are held by
        no live lease, oldest first."""

        def work(s: Session) -> list[StreamLease]:
            at = now()
            free = (StreamRow.lease_until.is_(None)) | (StreamRow.lease_until < at)
            rows = list(
                s.scalars(
                    select(StreamRow)
                    .where(StreamRow.desired == "run", StreamRow.state.not_in(FINISHED))
                    .where(free)
                    .order_by(StreamRow.created_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True, of=StreamRow)
                )
            )
            taken = []
            for row in rows:
                lease = uuid.uuid4().hex
                changed = rowcount(
                    s.execute(
                        update(StreamRow)
                        .where(StreamRow.id == row.id, StreamRow.desired == "run", free)
                        .values(
                            owner=owner,
                            lease=lease,
                            lease_until=at + timedelta(seconds=lease_s),
                            state="connecting",
                            claims=StreamRow.claims + 1,
                        )
                        .execution_options(synchronize_session=False)
                    )
                )
                if changed == 1:
                    s.refresh(row)
                    taken.append(StreamLease(_stream(row), lease))
            return taken

        return self._retrying(work)

    def beat(
        self,
        held: StreamLease,
        lease_s: float,
        state: str,
        stats: dict[str, Any],
        error: str | None,
    ) -> str | None:
        """Renew the lease with the stream's figures; returns what is wanted of it
        (``run`` or ``stop``), or None when the lease is lost (deleted, taken over)."""

        def work(s: Session) -> str | None:
            changed = rowcount(
                s.execute(
                    update(StreamRow)
                    .where(StreamRow.id == held.stream.id, StreamRow.lease == held.lease)
                    .values(
                        lease_until=now() + timedelta(seconds=lease_s),
                        state=state,
                        stats=stats,
                        last_error=error,
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            if not changed:
                return None
            return s.scalar(select(StreamRow.desired).where(StreamRow.id == held.stream.id))

        return self._retrying(work)

    def publish(self, held: StreamLease, seq: int, body: dict[str, Any], keep: int) -> bool:
        """Store event ``seq`` under the lease (False, nothing stored, when it is lost);
        events older than the newest ``keep`` are dropped."""

        def work(s: Session) -> bool:
            changed = rowcount(
                s.execute(
                    update(StreamRow)
                    .where(StreamRow.id == held.stream.id, StreamRow.lease == held.lease)
                    .values(events=seq)
                    .execution_options(synchronize_session=False)
                )
            )
            if not changed:
                return False
            s.add(StreamEventRow(stream_id=held.stream.id, seq=seq, body=body))
            if seq % 100 == 0:
                s.execute(
                    delete(StreamEventRow).where(
                        StreamEventRow.stream_id == held.stream.id,
                        StreamEventRow.seq <= seq - keep,
                    )
                )
            return True

        return self._retrying(work)

    def release(self, held: StreamLease, state: str | None = None) -> None:
        """Give the stream back: ended (``state`` ``ended``/``failed``), stopped, or for
        another worker to take on at once (``pending``)."""

        def work(s: Session) -> None:
            values: dict[str, Any] = {"owner": None, "lease": None, "lease_until": None}
            if state is not None:
                values["state"] = state
            s.execute(
                update(StreamRow)
                .where(StreamRow.id == held.stream.id, StreamRow.lease == held.lease)
                .values(values)
                .execution_options(synchronize_session=False)
            )

        self._retrying(work)
