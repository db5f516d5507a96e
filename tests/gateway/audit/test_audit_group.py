"""Audit appends committed in groups: the events of concurrent requests go in one
transaction, in arrival order, each caller gets its own stored event, and one bad event
fails alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from facerec.errors import InvalidArgumentError
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.crypto.envelope import MasterKey
from gateway.storage.audit import AuditRepository
from gateway.storage.schema import open_engine

KEY = MasterKey.generate().derive("audit")


class CountingRepository(AuditRepository):
    """The real repository, counting its transactions; the first one waits until
    ``release`` is set, so that the appends arriving meanwhile queue up behind it."""

    def __init__(self, url: str) -> None:
        super().__init__(open_engine(url))
        self.transactions: list[int] = []  # events per transaction
        self.release = threading.Event()

    def append(self, follow: Callable[[AuditEvent | None], list[AuditEvent]]) -> list[AuditEvent]:
        if not self.transactions:
            self.release.wait(10)
        events = super().append(follow)
        self.transactions.append(len(events))
        return events


@pytest.fixture
def audit(tmp_path: Path) -> tuple[AuditLog, CountingRepository]:
    repo = CountingRepository(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    head = tmp_path / "data" / "audit.head"
    head.parent.mkdir()
    return AuditLog(repo, KEY, head), repo


def test_concurrent_appends_share_transactions_and_form_one_chain(
    audit: tuple[AuditLog, CountingRepository],
) -> None:
    log, repo = audit
    with ThreadPoolExecutor(40) as pool:
        first = pool.submit(log.append, action="identify", outcome="no_match", subject="s0")
        while not log._writing.locked():  # the first append is in its transaction
            time.sleep(0.001)
        rest = [
            pool.submit(log.append, action="identify", outcome="match", subject=f"s{k}")
            for k in range(1, 40)
        ]
        deadline = time.monotonic() + 30
        while len(log._queued) < 39 and time.monotonic() < deadline:  # queued behind it
            time.sleep(0.005)
        repo.release.set()
        events = [first.result(), *(f.result() for f in rest)]
    assert sorted(e.seq for e in events) == list(range(1, 41))
    assert [e.subject for e in events] == [f"s{k}" for k in range(40)]  # each its own
    assert sum(repo.transactions) == 40
    # every append that arrived while the first was written went in one transaction
    assert repo.transactions == [1, 39]
    report = log.verify()
    assert report.ok, report
    assert log.head() == (40, log.events(39, 1)[0].mac)


def test_a_bad_event_fails_alone(audit: tuple[AuditLog, CountingRepository]) -> None:
    log, repo = audit
    repo.release.set()
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(log.append, action="verify", outcome="match") for _ in range(6)]
        bad = pool.submit(log.append, action="verify", outcome="match", no_such_field=1)
        stored = [f.result() for f in good]
        with pytest.raises(InvalidArgumentError, match="no_such_field"):
            bad.result()
    assert sorted(e.seq for e in stored) == list(range(1, 7))
    assert log.verify().ok and log.last_seq() == 6
