"""Audit appends on PostgreSQL: after this process's own event, one conditional statement
(gateway/storage/audit.py, ``_append_after``); when another process has appended since, or
events were cut from the end, the append takes the locked path and chains onto the event
actually last, so replicas appending together still form one chain."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from devkit import servers
from gateway.audit.chain import verify_chain
from gateway.audit.log import AuditLog
from gateway.crypto.envelope import MasterKey
from gateway.storage import audit as stored_audit
from gateway.storage.audit import AuditRepository
from gateway.storage.connections import read_engine
from gateway.storage.schema import open_engine

pytestmark = pytest.mark.integration

KEY = MasterKey.generate().derive("audit")


@pytest.fixture
def url(postgres_url: str) -> str:
    return servers.fresh_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}")


def replica(url: str, tmp_path: Path, name: str) -> AuditLog:
    """One process's audit log: its own engines, as :class:`gateway.storage.Database`."""
    engine = open_engine(url)
    (tmp_path / name).mkdir()
    return AuditLog(AuditRepository(engine, read_engine(engine)), KEY, tmp_path / name / "head")


def statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    return seen


def driver_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the audit repository runs through psycopg itself (``driver_rows``,
    still run: recorded on the way)."""
    seen: list[str] = []
    real = stored_audit.driver_rows

    def spy(engine: Engine, statement: str, params: Any) -> list[tuple[Any, ...]]:
        seen.append(statement)
        return real(engine, statement, params)

    monkeypatch.setattr(stored_audit, "driver_rows", spy)
    return seen


def test_an_append_after_its_own_is_one_statement(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = replica(url, tmp_path, "a")
    repo = log.stored
    locked, reads = statements(repo.engine), statements(repo.reads)
    single = driver_statements(monkeypatch)
    log.append(action="enrol", outcome="ok")  # nothing known yet: the locked path
    assert any("pg_advisory_xact_lock" in s for s in locked) and not single and not reads
    locked.clear()
    for _ in range(3):
        log.append(action="identify", outcome="no_match")
    assert locked == [] and reads == [] and len(single) == 3
    assert all(s.lstrip().upper().startswith("INSERT") for s in single)
    assert log.verify().ok and repo.last_seq() == 4


def test_another_replica_in_between_sends_the_append_down_the_locked_path(
    url: str, tmp_path: Path
) -> None:
    a, b = replica(url, tmp_path, "a"), replica(url, tmp_path, "b")
    a.append(action="enrol", outcome="ok")
    a.append(action="enrol", outcome="ok")
    b.append(action="identify", outcome="no_match")  # a's last is no longer the last
    locked = statements(a.stored.engine)
    event_ = a.append(action="verify", outcome="match")
    assert any("pg_advisory_xact_lock" in s for s in locked)
    assert event_.seq == 4
    assert a.verify().ok and b.verify().ok


def test_a_cut_end_is_not_built_over(url: str, tmp_path: Path) -> None:
    """Events cut from the end: the next append chains onto the event now last, as the
    locked path always did (the head file reports the cut), never past a gap."""
    a = replica(url, tmp_path, "a")
    for _ in range(5):
        a.append(action="enrol", outcome="ok")
    with a.stored.engine.begin() as c:
        c.execute(text("DELETE FROM audit_events WHERE seq > 3"))
    event_ = a.append(action="identify", outcome="no_match")
    assert event_.seq == 4
    assert verify_chain(KEY, a.stored.events()).ok  # one unbroken chain in the table
    report = a.verify()  # against the head this process recorded (seq 5)
    assert not report.ok


def test_replicas_appending_at_once_form_one_chain(url: str, tmp_path: Path) -> None:
    logs = [replica(url, tmp_path, name) for name in "abc"]
    errors: list[BaseException] = []

    def append_many(log: AuditLog) -> None:
        try:
            for _ in range(40):
                log.append(action="identify", outcome="no_match")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=append_many, args=(log,)) for log in logs for _ in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors
    stored = logs[0].stored.events()
    assert [e.seq for e in stored] == list(range(1, 241))
    assert verify_chain(KEY, stored).ok
    for log in logs:
        assert log.verify().ok
