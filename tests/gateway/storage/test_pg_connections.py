"""PostgreSQL connections without a round trip per checkout (gateway/storage/connections.py):
a connection the server closed is replaced as it leaves the pool, the reads engine is in
autocommit (no BEGIN/ROLLBACK around each read), and statements run through psycopg
itself (``driver_rows``) give SQLAlchemy's errors and never pool a lost connection."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from devkit import servers
from gateway.storage.connections import driver_rows, read_engine, socket_alive
from gateway.storage.schema import open_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_url: str) -> Engine:
    url = servers.fresh_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}")
    return open_engine(url)


def _backend(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.scalar(text("SELECT pg_backend_pid()")))


def _terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as c:  # a second connection: the pooled one is checked in
        # waits until the backend has exited (its socket closed), up to 10 s
        c.execute(text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})
        c.commit()


def test_a_connection_the_server_closed_is_replaced_at_checkout(engine: Engine) -> None:
    with engine.connect() as a, engine.connect() as b:  # two connections in the pool
        victim = int(a.scalar(text("SELECT pg_backend_pid()")))
        b.scalar(text("SELECT 1"))
    pool = engine.pool
    _terminate(engine, victim)
    deadline = time.monotonic() + 5
    seen: set[int] = set()
    while time.monotonic() < deadline and pool.checkedin():  # type: ignore[attr-defined]
        pid = _backend(engine)  # every checkout must work: the dead one is never handed out
        assert pid != victim
        seen.add(pid)
        if len(seen) >= 2:
            break
    assert victim not in seen


def test_socket_alive_sees_the_close_without_asking_the_server(engine: Engine) -> None:
    raw = engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        pid = int(dbapi.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[union-attr]
        dbapi.rollback()  # type: ignore[union-attr]
        assert socket_alive(dbapi)
        _terminate(engine, pid)
        deadline = time.monotonic() + 5
        while socket_alive(dbapi) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not socket_alive(dbapi)
    finally:
        raw.invalidate()


def test_reads_run_in_autocommit_and_see_committed_writes(engine: Engine) -> None:
    reads = read_engine(engine)
    assert reads is not engine
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t (v int)"))
    with reads.connect() as c:
        assert c.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
        assert c.scalar(text("SELECT count(*) FROM t")) == 0
        with engine.begin() as w:
            w.execute(text("INSERT INTO t VALUES (1)"))
        assert c.scalar(text("SELECT count(*) FROM t")) == 1
        # no transaction left open between statements (inside BEGIN it would be INTRANS)
        status = c.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        assert status.name == "IDLE"
    reads.dispose()


def test_driver_rows_reads_and_writes_in_autocommit(engine: Engine) -> None:
    reads = read_engine(engine)
    assert driver_rows(reads, "CREATE TABLE t (id int PRIMARY KEY, v text)", {}) == []
    assert driver_rows(reads, "INSERT INTO t VALUES (%(i)s, %(v)s)", {"i": 1, "v": "a"}) == []
    ids = [1, 2]
    assert driver_rows(reads, "SELECT id, v FROM t WHERE id = ANY(%(ids)s)", {"ids": ids}) == [
        (1, "a")
    ]
    with engine.connect() as c:  # committed: another connection sees it
        assert c.scalar(text("SELECT count(*) FROM t")) == 1
    reads.dispose()


def test_driver_rows_errors_are_sqlalchemys_and_leave_no_parameters(engine: Engine) -> None:
    reads = read_engine(engine)
    driver_rows(reads, "CREATE TABLE t (id int PRIMARY KEY)", {})
    driver_rows(reads, "INSERT INTO t VALUES (1)", {})
    with pytest.raises(IntegrityError) as duplicate:
        driver_rows(reads, "INSERT INTO t VALUES (%(i)s)", {"i": 1})
    with pytest.raises(ProgrammingError):
        driver_rows(reads, "SELEC nothing", {})
    assert "[parameters" not in str(duplicate.value)  # audit events stay out of the logs
    assert driver_rows(reads, "SELECT count(*) FROM t", {}) == [(1,)]  # the pool is fine
    reads.dispose()


def test_driver_rows_never_pools_a_connection_lost_in_a_statement(engine: Engine) -> None:
    """The server closes the connection while a statement runs (a restart, a terminated
    backend): the caller gets SQLAlchemy's OperationalError (a 503, retry), and the
    connection is dropped rather than checked back in."""
    reads = read_engine(engine)
    reads.pool.dispose()
    failure: list[BaseException] = []

    def sleep() -> None:
        try:
            driver_rows(reads, "SELECT pg_sleep(30)", {})
        except BaseException as exc:
            failure.append(exc)

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    query = "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
    deadline = time.monotonic() + 10
    # (not in one transaction: it would keep its first snapshot of pg_stat_activity)
    while not (pids := [r[0] for r in driver_rows(reads, query, {})]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    _terminate(engine, int(pids[0]))
    sleeper.join(timeout=10)
    assert isinstance(failure[0], OperationalError) and failure[0].connection_invalidated
    with reads.connect() as a, reads.connect() as b:  # every pooled connection: live ones
        for c in (a, b):
            assert c.scalar(text("SELECT pg_backend_pid()")) != pids[0]
    reads.dispose()


def test_sqlite_keeps_its_engine(tmp_path: object) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/x.db")
    assert read_engine(engine) is engine


class _Fake:
    """What socket_alive reads of a psycopg connection."""

    def __init__(self, fd: int) -> None:
        self.fd, self.closed, self.broken = fd, False, False

    def fileno(self) -> int:
        return self.fd


def test_socket_alive_works_past_descriptor_1024() -> None:
    """A busy gateway holds over 1,024 descriptors (connections, WebSockets): the check
    must not depend on select()'s limit."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 2000
    if max(soft, hard if hard != resource.RLIM_INFINITY else high + 1) <= high:
        pytest.skip("this process may not open descriptor 2000")
    if soft <= high:
        resource.setrlimit(resource.RLIMIT_NOFILE, (high + 1, hard))
    ours, peer = socket.socketpair()
    try:
        os.dup2(ours.fileno(), high)
        fake = _Fake(high)
        assert socket_alive(fake)
        peer.send(b"x")  # the server said something: not an idle connection any more
        assert not socket_alive(fake)
    finally:
        os.close(high)
        ours.close()
        peer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
