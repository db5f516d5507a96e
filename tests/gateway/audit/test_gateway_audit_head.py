"""One audit chain written by several processes, each keeping the highest head it has seen
in a file of its own: cutting events from the end is detected by every process that saw
them, even after the log has grown past the cut (the head is not moved over a gap)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from gateway.audit.log import AuditLog
from gateway.crypto.envelope import MasterKey
from gateway.storage.audit import AuditRepository
from gateway.storage.schema import open_engine

KEY = MasterKey.generate().derive("audit")


def replicas(tmp_path: Path) -> tuple[AuditLog, AuditLog]:
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    a = AuditLog(AuditRepository(open_engine(url)), KEY, tmp_path / "a" / "audit.head")
    b = AuditLog(AuditRepository(open_engine(url)), KEY, tmp_path / "b" / "audit.head")
    for log in (a, b):
        assert log.head_file is not None
        log.head_file.parent.mkdir()
    return a, b


def test_replicas_append_to_one_chain_and_each_head_verifies(tmp_path: Path) -> None:
    a, b = replicas(tmp_path)
    for k in range(10):
        (a if k % 3 else b).append(action="identify", outcome="no_match")
    assert a.verify().ok and b.verify().ok
    assert a.head() == (9, a.events(8, 1)[0].mac)  # a's last own event
    assert b.witness() is None  # b records the database's head too
    assert b.head() == (10, b.events(9, 1)[0].mac)


def test_cut_events_are_detected_even_after_the_log_grew_past_the_cut(tmp_path: Path) -> None:
    a, b = replicas(tmp_path)
    for _ in range(8):
        a.append(action="enrol", outcome="ok")
    assert b.witness() is None and b.head() is not None and b.head()[0] == 8
    with a.stored.engine.begin() as conn:  # someone with the database cuts the end
        conn.execute(text("DELETE FROM audit_events WHERE seq > 5"))
    for _ in range(6):  # the log grows past where it was: seq 6..11, a new chain
        b.append(action="identify", outcome="no_match")
    for log in (a, b):
        head = log.head()
        assert head is not None and head[0] == 8  # not moved over the cut
        report = log.verify()
        assert not report.ok and report.first_bad_seq == 8
        assert report.reason == "differs from the recorded head"
    witnessed = a.witness()
    assert witnessed is not None and not witnessed.ok


def test_a_head_file_shared_with_another_process_is_never_moved_back(tmp_path: Path) -> None:
    """Processes sharing a data directory share the head file; each keeps what it last
    read or wrote, and reads the file again once another has replaced it: a late head
    write for an older event must not rewind the head another process moved on."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    (tmp_path / "data").mkdir()
    shared = tmp_path / "data" / "audit.head"
    a = AuditLog(AuditRepository(open_engine(url)), KEY, shared)
    b = AuditLog(AuditRepository(open_engine(url)), KEY, shared)
    first = a.append(action="enrol", outcome="ok")
    assert a.head() == (1, first.mac)  # a now knows the file as it wrote it
    b.append(action="identify", outcome="no_match")
    third = b.append(action="identify", outcome="no_match")
    second = a.events(1, 1)[0]
    a._write_head(second, second)  # a's write of an older head, arriving late
    assert a.head() == (3, third.mac)
    fourth = a.append(action="delete", outcome="ok")
    assert fourth.seq == 4 and a.head() == (4, fourth.mac)
    assert a.verify().ok and b.verify().ok
