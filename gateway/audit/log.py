"""The audit log as the service writes it: chained events in SQL, the chain's head apart.

Every process of a deployment appends to the one chain in the database (appends are
serialised there: :class:`~gateway.storage.audit.AuditRepository`). A chain alone cannot
show that events were cut from its end, and whoever can write the database could rewind
a head kept in it too; so each process keeps the highest head it has seen (``seq`` and
chain value) in a small file of its own data directory, outside the database: after each
of its own appends, and every few seconds from the database's last event
(:meth:`AuditLog.witness`, which also checks that the database still holds the head it
recorded). Cutting events from the end is detected by any process that saw them, by its
witness within seconds and by ``facerec audit verify`` on its machine. Processes sharing
a data directory share the file, written under a lock (its format:
:mod:`gateway.audit.head_file`).
"""

from __future__ import annotations

import hmac
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facerec.errors import InvalidArgumentError
from gateway.audit.chain import AuditEvent, ChainReport, chain_event, verify_chain
from gateway.audit.head_file import HeadFile
from gateway.storage.audit import AuditRepository

log = logging.getLogger(__name__)


def utc_timestamp() -> str:
    """Now, as ISO 8601 in UTC with a ``Z`` (e.g. ``2026-11-30T01:02:03.456Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained events (keyed by ``key``) and checks the whole log.

    Appends are committed in groups: a request's event waits while another group is being
    written, and then goes with every event that arrived meanwhile, in one transaction
    (one lock, one commit, one write of the head file), in the order they arrived. Each
    caller returns once its own event is stored, as before.
    """

    def __init__(self, events: AuditRepository, key: bytes, head_file: Path | None) -> None:
        self.stored, self.key, self.head_file = events, key, head_file
        self._writing = threading.Lock()  # one group at a time
        self._queued: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._head = None if head_file is None else HeadFile(head_file)

    def append(self, **values: Any) -> AuditEvent:
        """Chain and store one event (fields of :class:`AuditEvent`; ``time`` defaults to
        now)."""
        values.setdefault("time", utc_timestamp())
        mine = _Pending(values)
        with self._queue_lock:
            self._queued.append(mine)
        with self._writing:
            if not mine.done.is_set():  # not written by the group before: lead this one
                with self._queue_lock:
                    group, self._queued = self._queued, []
                self._write(group)
        if mine.error is not None:
            raise mine.error
        assert mine.event is not None
        return mine.event

    def _write(self, group: list[_Pending]) -> None:
        """Store ``group``'s events in one transaction and record the head; each pending
        event gets its stored event or the error (a bad event fails alone)."""
        written: list[_Pending] = []

        def chain(last: AuditEvent | None) -> list[AuditEvent]:
            written.clear()
            out = []
            for pending in group:
                try:
                    event = chain_event(self.key, last, **pending.values)
                except (InvalidArgumentError, TypeError, ValueError) as exc:
                    pending.error = exc
                    continue
                pending.error = None
                written.append(pending)
                out.append(event)
                last = event
            return out

        try:
            events = self.stored.append(chain)
            if events:
                self._write_head(events[0], events[-1])
            for pending, event in zip(written, events, strict=True):
                pending.event = event
        except Exception as exc:
            for pending in written:
                pending.error = exc
        finally:
            for pending in group:
                if pending.event is None and pending.error is None:  # interrupted
                    pending.error = RuntimeError("the audit append was interrupted")
                pending.done.set()

    def head(self) -> tuple[int, str] | None:
        return None if self._head is None else self._head.read()

    def _write_head(self, first: AuditEvent, event: AuditEvent) -> None:
        """Record ``event`` as the head; ``first`` begins the run of events chained up to
        it (``event`` itself for one)."""
        if self._head is None:
            return
        with self._head.locked() as file:
            current = file.read()
            if current is not None and current[0] >= event.seq:
                return  # another process already recorded a later event
            if (
                current is not None
                and not self._follows(first, current)
                and not self._holds(current)
            ):
                # the log no longer holds the head recorded here: keep it, as evidence
                log.critical("AUDIT LOG TAMPERED: event %d is gone or changed", current[0])
                return
            file.write((event.seq, event.mac))

    @staticmethod
    def _follows(event: AuditEvent, head: tuple[int, str]) -> bool:
        """Whether ``event`` was chained right onto ``head`` (then the log held the head
        when the event was stored: no need to read it back)."""
        return event.seq == head[0] + 1 and hmac.compare_digest(event.prev, head[1])

    def _holds(self, head: tuple[int, str]) -> bool:
        """Whether the stored log still holds ``head`` unchanged."""
        held = self.stored.event(head[0])
        return held is not None and hmac.compare_digest(held.mac, head[1])

    def witness(self) -> ChainReport | None:
        """Record the database's last event as the head when it is newer, after checking
        that the database still holds the head recorded here: a report of what is wrong
        (events cut from the end, or the head event changed), or None when all is well."""
        recorded = self.head()
        last = self.stored.last()
        if recorded is not None:
            seq, mac = recorded
            held = self.stored.event(seq)
            if held is None:
                return ChainReport(
                    False, last.seq if last else 0, seq, f"the log ends before event {seq}"
                )
            if not hmac.compare_digest(held.mac, mac):
                return ChainReport(False, seq, seq, "differs from the recorded head")
        if last is not None:
            self._write_head(last, last)
        return None

    def verify(self) -> ChainReport:
        return verify_chain(self.key, self.stored.events(), self.head())

    def events(self, after: int = 0, limit: int = 100) -> list[AuditEvent]:
        """Events with ``seq > after``, oldest first."""
        return self.stored.events(after, limit)

    def last_seq(self) -> int:
        return self.stored.last_seq()


class _Pending:
    """One caller's event waiting for its group to be written."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.done = threading.Event()
        self.event: AuditEvent | None = None
        self.error: BaseException | None = None
