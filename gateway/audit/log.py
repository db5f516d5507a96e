"""The audit log as the service writes it: chained events in SQL, the chain's head apart.

The head (last ``seq`` and chain value) is written to a small file beside the data after
every append, so cutting events from the end of the SQL log is detected too.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.chain import AuditEvent, ChainReport, chain_event, verify_chain
from gateway.storage.audit import AuditRepository
from gateway.storage.files import replace_private


def utc_timestamp() -> str:
    """Now, as ISO 8601 in UTC with a ``Z`` (e.g. ``2026-11-30T01:02:03.456Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained events (keyed by ``key``) and checks the whole log."""

    def __init__(self, events: AuditRepository, key: bytes, head_file: Path | None) -> None:
        self.stored, self.key, self.head_file = events, key, head_file
        self._lock = threading.Lock()

    def append(self, **values: Any) -> AuditEvent:
        """Chain and store one event (fields of :class:`AuditEvent`; ``time`` defaults to
        now)."""
        values.setdefault("time", utc_timestamp())
        event = self.stored.append(lambda last: chain_event(self.key, last, **values))
        self._write_head(event)
        return event

    def head(self) -> tuple[int, str] | None:
        if self.head_file is None or not self.head_file.exists():
            return None
        data = json.loads(self.head_file.read_text())
        return int(data["seq"]), str(data["mac"])

    def _write_head(self, event: AuditEvent) -> None:
        if self.head_file is None:
            return
        with self._lock:
            current = self.head()
            if current is not None and current[0] >= event.seq:
                return  # another process already recorded a later event
            replace_private(self.head_file, json.dumps({"seq": event.seq, "mac": event.mac}))

    def verify(self) -> ChainReport:
        return verify_chain(self.key, self.stored.events(), self.head())

    def events(self, after: int = 0, limit: int = 100) -> list[AuditEvent]:
        """Events with ``seq > after``, oldest first."""
        return self.stored.events(after, limit)

    def last_seq(self) -> int:
        return self.stored.last_seq()
