"""The latest Milvus write of the deployment, per collection, so that every replica's
searches see every replica's writes.

Milvus's ``Session`` consistency lets a client read its own writes: a search waits until
the query nodes have caught up with that client's last write (its timestamp, which
pymilvus keeps per process). A face enrolled through one replica and identified through
another would be missed for as long as the query nodes lag (a few hundred ms). Each
write's timestamp is therefore also raised here, in the database, before the enrolment
answers, and each search first reads it: the search then waits exactly as long as is
needed for every write acknowledged anywhere before it began (no wait at all when the
last write is older than the lag). One primary-key read per search, one conditional
update per write.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.storage.connections import driver_rows
from gateway.storage.locks import is_postgres
from gateway.storage.schema import IndexMarkRow, rowcount

_MARK_PG = "SELECT ts FROM index_marks WHERE name = %(name)s"  # through psycopg itself


class IndexMarks:
    """The ``index_marks`` table: collection -> the latest write's hybrid timestamp."""

    def __init__(self, engine: Engine, reads: Engine | None = None) -> None:
        self.engine = engine
        self.reads = reads or engine  # single-statement reads (storage/connections.py)

    def get(self, collection: str) -> int:
        """The collection's mark (every search reads it: one plain query)."""
        if is_postgres(self.reads):
            rows = driver_rows(self.reads, _MARK_PG, {"name": collection})
            return int(rows[0][0] or 0) if rows else 0
        with self.reads.connect() as c:
            return int(
                c.scalar(select(IndexMarkRow.ts).where(IndexMarkRow.name == collection)) or 0
            )

    def raise_to(self, collection: str, ts: int) -> None:
        """Make ``ts`` the collection's mark unless a later one is there."""
        if ts <= 0:
            return
        with Session(self.engine) as s, s.begin():
            changed = rowcount(
                s.execute(
                    update(IndexMarkRow)
                    .where(IndexMarkRow.name == collection, IndexMarkRow.ts < ts)
                    .values(ts=ts)
                )
            )
            if changed or s.get(IndexMarkRow, collection) is not None:
                return
        try:
            with Session(self.engine) as s, s.begin():
                s.add(IndexMarkRow(name=collection, ts=ts))
        except IntegrityError:  # another process wrote the first mark meanwhile
            self.raise_to(collection, ts)
