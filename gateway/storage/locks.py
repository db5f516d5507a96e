"""Locks shared by every process of a deployment, held in the database itself.

On PostgreSQL these are advisory locks: :func:`transaction_lock` for the span of one
transaction (released by its commit or rollback), :func:`session_lock` for longer work on
a connection of its own (released when the work ends, or when the connection drops with a
dead process). SQLite has one writer at a time already: a transaction that writes first
and reads after holds the database's write lock for the rest of it; for the longer work,
:func:`session_lock` takes an ``flock`` on a file beside the database (SQLite's processes
share one machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")


def lock_id(name: str) -> int:
    """A stable signed 64-bit advisory-lock id for ``name``."""
    digest = hashlib.sha256(f"facerec/lock/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def transaction_lock(session: Session | Connection, name: str) -> None:
    """Serialise the rest of ``session``'s transaction (an ORM session's or a plain
    connection's) with every other one that takes ``name``, in any process (PostgreSQL).
    On SQLite, write before reading what must not change: the first write takes the
    database's lock."""
    bind = session.engine if isinstance(session, Connection) else session.get_bind()
    if is_postgres(bind):  # type: ignore[arg-type]
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id(name)})


def in_transaction(engine: Engine, work: Callable[[Session], T], attempts: int = 20) -> T:
    """Run ``work`` in one transaction; on SQLite, where another process's write
    transaction can make a writer's find the database busy, try it again."""
    for attempt in range(attempts):
        try:
            with Session(engine) as s, s.begin():
                return work(s)
        except OperationalError:
            if engine.dialect.name != "sqlite" or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))
    raise AssertionError("unreachable")


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database)


@contextmanager
def session_lock(engine: Engine, name: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold ``name`` across processes for the body of the ``with`` (start-up work:
    migrations, repair, the bootstrap key). Waits up to ``timeout`` seconds."""
    if is_postgres(engine):
        with engine.connect() as conn:
            key = lock_id(name)
            deadline = time.monotonic() + timeout
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process holds the {name} lock")
                time.sleep(0.1)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    path = _sqlite_file(engine)
    if path is None:
        yield
        return
    lock_file = path.with_name(f"{path.name}.{name}.lock")
    with lock_file.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process holds the {name} lock") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
