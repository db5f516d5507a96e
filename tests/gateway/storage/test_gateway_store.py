"""The SQL system of record (SQLite here, and PostgreSQL where a query differs):
sealed templates, crypto-shredding, rotation, duplicates, the pending/indexed states and
the stored audit chain."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, text

from devkit import servers
from gateway.audit.chain import verify_chain
from gateway.audit.log import AuditLog
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.errors import ConflictError, NotFoundError
from gateway.storage.database import Database


def unit(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return x / np.linalg.norm(x)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'facerec.sqlite3'}", Keyring(MasterKey.generate()))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def either_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """Both databases, for the reads that PostgreSQL runs through psycopg itself
    (gateway/storage/connections.py, ``driver_rows``)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'facerec.sqlite3'}"
    else:
        postgres: str = request.getfixturevalue("postgres_url")
        url = servers.fresh_database(postgres, f"t_{uuid.uuid4().hex[:12]}")
    return Database(url, Keyring(MasterKey.generate()))


def db_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("facerec.sqlite3*"))


def test_subjects_and_faces(db: Database, tmp_path: Path) -> None:
    store, faces = db.subjects, db.faces
    alice = store.create("Alice", {"team": "blue"})
    bob = store.create("Bob")
    assert store.get(alice.id).meta == {"team": "blue"}
    assert [s.name for s in store.page()[0]] == ["Alice", "Bob"]
    assert [s.name for s in store.page(offset=1, limit=5)[0]] == ["Bob"]
    emb = unit(1)
    face = faces.add_face(alice.id, emb, "hash-a", 0.9, [1, 2, 3, 4])
    assert faces.pending_face_ids() == [face]
    faces.mark_indexed([face])
    assert faces.pending_face_ids() == []
    ((face_id, subject_id, opened),) = list(faces.templates())
    assert (face_id, subject_id) == (face, alice.id)
    np.testing.assert_array_equal(opened, emb)
    assert emb.tobytes() not in db_bytes(tmp_path)
    with pytest.raises(ConflictError) as dup:
        faces.add_face(alice.id, emb, "hash-a", 0.9, [1, 2, 3, 4])
    assert dup.value.code == "duplicate_face"
    faces.add_face(bob.id, emb, "hash-a", 0.9, [1, 2, 3, 4])  # another subject may
    with pytest.raises(NotFoundError):
        store.get("nope")
    with pytest.raises(NotFoundError):
        faces.add_face("nope", emb, "h", 0.5, [0, 0, 1, 1])


def test_delete_shreds_the_data_key(db: Database, tmp_path: Path) -> None:
    store = db.subjects
    alice = store.create("Alice")
    face = db.faces.add_face(alice.id, unit(2), "h", 0.9, [0, 0, 1, 1])
    with db.engine.connect() as conn:
        blob = conn.execute(text("SELECT dek_blob FROM subjects")).scalar_one()
    assert store.delete(alice.id) == [face]
    assert list(db.faces.templates()) == []
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM faces")).scalar_one() == 0
    assert blob not in db_bytes(tmp_path)  # no VACUUM needed: overwritten on delete


def test_master_key_rotation(tmp_path: Path) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    url = f"sqlite:///{tmp_path / 'facerec.sqlite3'}"
    db1 = Database(url, Keyring(old))
    subject = db1.subjects.create("Alice")
    db1.faces.add_face(subject.id, unit(3), "h", 0.9, [0, 0, 1, 1])
    assert Database(url, Keyring(new, older=[old])).rotate_master_key() == 1
    ((_, _, opened),) = list(Database(url, Keyring(new)).faces.templates())
    np.testing.assert_array_equal(opened, unit(3))


def test_stored_audit_chain_detects_edits(db: Database) -> None:
    key = MasterKey.generate().derive("audit")
    # A second Database on the same file stands for another gateway process: its appends
    # race with the first one's and must retry, not fork the chain.
    other = Database(str(db.engine.url), db.keyring)
    logs = [AuditLog(db.audit, key, None), AuditLog(other.audit, key, None)]

    def append(i: int) -> None:
        logs[i % 2].append(time=f"t{i}", action="verify", outcome="match", score=0.5)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append, range(40)))
    events = db.audit.events()
    assert [e.seq for e in events] == list(range(1, 41))
    assert verify_chain(key, events).ok
    with db.engine.begin() as conn:
        body = json.loads(
            conn.execute(text("SELECT body FROM audit_events WHERE seq=7")).scalar_one()
        )
        body["outcome"] = "no_match"
        conn.execute(text("UPDATE audit_events SET body=:b WHERE seq=7"), {"b": json.dumps(body)})
    report = verify_chain(key, db.audit.events())
    assert not report.ok and report.first_bad_seq == 7


def test_idempotency_claims(db: Database) -> None:
    from datetime import timedelta

    from gateway.storage.schema import now

    keys = db.idempotency
    hour = timedelta(hours=1)
    assert keys.claim("k1:a", "f1", hour) is None  # ours
    held = keys.claim("k1:a", "f1", hour)
    assert held is not None and held.status is None  # in progress
    keys.release("k1:a", "f1")
    assert keys.claim("k1:a", "f2", hour) is None  # released: free again, for any request
    keys.complete("k1:a", 201, b"sealed")
    held = keys.claim("k1:a", "f2", hour)
    assert held is not None and (held.fingerprint, held.status, held.response) == (
        "f2",
        201,
        b"sealed",
    )
    keys.release("k1:a", "f2")  # a finished request's key is never released
    assert keys.keys() == ["k1:a"]
    assert keys.claim("k1:b", "f3", hour) is None
    assert keys.claim("k1:b", "f4", timedelta(0)) is None  # abandoned claims are taken over
    assert keys.prune(now() + timedelta(seconds=1)) == 2 and keys.keys() == []


def test_candidate_templates_keep_to_the_callers_scope(either_db: Database) -> None:
    """The templates opened for an identification's candidates are only those of the
    caller's namespace and gallery, whatever subject ids the index returned (a second
    guard behind the index's own filter); indexed faces only; unknown ids are skipped."""
    db = either_db
    store = db.faces
    mine = db.subjects.create("Mine", namespace="acme", gallery="staff")
    visitor = db.subjects.create("Visitor", namespace="acme", gallery="visitors")
    other = db.subjects.create("Other", namespace="globex", gallery="staff")
    for n, subject in enumerate((mine, visitor, other)):
        store.mark_indexed([store.add_face(subject.id, unit(n), f"h{n}", 0.9, [0, 0, 9, 9])])
    store.add_face(mine.id, unit(7), "pending", 0.9, [0, 0, 9, 9])  # not in the index yet
    ids = [mine.id, visitor.id, other.id]
    assert set(store.candidate_templates([*ids, "no-such-subject"])) == set(ids)
    np.testing.assert_array_equal(store.candidate_templates([mine.id])[mine.id][1], unit(0)[None])
    assert set(store.candidate_templates(ids, "acme")) == {mine.id, visitor.id}
    assert set(store.candidate_templates(ids, "acme", "staff")) == {mine.id}
    assert set(store.candidate_templates(ids, None, "staff")) == {mine.id, other.id}
    name, vectors = store.candidate_templates(ids, "globex", "staff")[other.id]
    assert name == "Other"
    np.testing.assert_array_equal(vectors, unit(2)[None])


class _Statements:
    """Counts the SQL statements ``db`` sends while in the ``with`` block."""

    def __init__(self, db: Database) -> None:
        self.engine, self.count = db.engine, 0

    def _seen(self, *_: object) -> None:
        self.count += 1

    def __enter__(self) -> _Statements:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def test_out_of_scope_lookups_cost_what_unknown_ids_do(db: Database) -> None:
    """Another tenant's subject, another key's job: refused by the same single query that
    misses an unknown id (the scope is in its WHERE clause), so the 404's timing does not
    tell a real id from a made-up one."""
    theirs = db.subjects.create("Mallory", namespace="globex")
    assert db.subjects.get(theirs.id, "globex").name == "Mallory"
    counts = []
    for subject_id in (theirs.id, "0123456789abcdef"):
        with _Statements(db) as seen, pytest.raises(NotFoundError):
            db.subjects.get(subject_id, "acme")
        counts.append(seen.count)
    assert counts == [1, 1]

    job = db.jobs.create("identify", "key-b", "globex", {}, b"k" * 32, 4, 16, 60.0)
    db.jobs.enqueue(job.id, 1)
    assert db.jobs.get(job.id, key_id="key-b").id == job.id
    counts = []
    for job_id in (job.id, "0123456789abcdef"):
        with _Statements(db) as seen, pytest.raises(NotFoundError):
            db.jobs.get(job_id, key_id="key-a")
        counts.append(seen.count)
    assert counts == [1, 1]


def test_a_process_of_this_host_that_no_longer_runs_is_not_live(db: Database) -> None:
    """A process killed a moment ago still has a fresh heartbeat; its pid says it is gone
    (so a restart's repair takes back its half-done enrolments). Another host's process,
    and one that runs, stay live until their heartbeat is old."""
    import socket
    import subprocess
    import sys

    from gateway.storage.processes import gone_from_this_host

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    host = socket.gethostname()
    dead = f"{host}/{ended.stdout.strip()}/abc123"
    running = f"{host}/{os.getpid()}/def456"
    elsewhere = "another-host/1/fed789"
    for name in (dead, running, elsewhere):
        db.processes.register(name, "api", "test")
    assert gone_from_this_host(dead) and not gone_from_this_host(running)
    assert db.processes.live(60.0) >= {running, elsewhere}
    assert dead not in db.processes.live(60.0)
