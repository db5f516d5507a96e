"""PostgreSQL connections without a round trip per checkout (gateway/storage/connections.py):
a connection the server closed is replaced as it leaves the pool, and the reads engine is
in autocommit (no BEGIN/ROLLBACK around each read)."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from devkit import servers
from gateway.storage.connections import read_engine, socket_alive
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
