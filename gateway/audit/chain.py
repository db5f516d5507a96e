"""The audit log's event schema and its hash chain.

Every event has the same fields, none of which can hold an image or an embedding. Each
event carries the chain value of the one before it, and its own value is an HMAC-SHA256
(keyed from the master key) over its fields and that previous value. Editing, deleting,
inserting or reordering any event breaks every value from there on, and without the key the
chain cannot be recomputed to hide it. Storage (SQL) appends only; :func:`verify_chain`
checks a whole log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from facerec.errors import InvalidArgumentError

GENESIS = "0" * 64
OUTCOMES = frozenset({"ok", "match", "no_match", "refused", "error"})


@dataclass(frozen=True)
class AuditEvent:
    """One audited action. ``score`` is a similarity, never a template."""

    seq: int
    time: str  # ISO 8601, UTC
    action: str  # e.g. "enrol", "verify", "identify", "delete_subject", "key_rotate"
    outcome: str  # one of OUTCOMES
    key_id: str | None = None  # the API key used (its id, never the key)
    role: str | None = None
    subject: str | None = None
    score: float | None = None
    request_id: str | None = None
    prev: str = GENESIS
    mac: str = ""
    # Fields added later (LATE_FIELDS): the chain value covers them only when set, so
    # the events written before they existed still verify.
    client: str | None = None  # the client address of a refused request
    count: int | None = None  # refusals this event stands for (an aggregated row)
    threshold: float | None = None  # the decision threshold of a verify or identify
    target: str | None = None  # what was acted on besides a subject (an API key's id)
    detail: str | None = None  # counts and the like, written by the service, never input

    def body(self) -> dict[str, Any]:
        """The fields the chain value covers (all but ``mac``; late fields when set)."""
        data = asdict(self)
        del data["mac"]
        for late in _LATE_FIELDS:
            if data[late] is None:
                del data[late]
        return data


_LATE_FIELDS = ("client", "count", "threshold", "target", "detail")
FIELDS = tuple(f.name for f in fields(AuditEvent))


def _mac(key: bytes, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def chain_event(key: bytes, last: AuditEvent | None, **values: Any) -> AuditEvent:
    """The next event after ``last`` (None for the first), with its chain value."""
    unknown = set(values) - set(FIELDS) | ({"seq", "prev", "mac"} & set(values))
    if unknown:
        raise InvalidArgumentError(f"not audit fields: {sorted(unknown)}")
    if values.get("outcome") not in OUTCOMES:
        raise InvalidArgumentError(f"outcome must be one of {sorted(OUTCOMES)}")
    for name in ("score", "threshold"):
        if values.get(name) is not None:
            values[name] = round(float(values[name]), 6)
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.mac
    event = AuditEvent(seq=seq, prev=prev, **values)
    return AuditEvent(**{**event.body(), "mac": _mac(key, event.body())})


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(
    key: bytes, events: Iterable[AuditEvent], head: tuple[int, str] | None = None
) -> ChainReport:
    """Check a whole log in storage order: sequence, links and every chain value.

    A chain cannot show that events were cut from its end; ``head`` (a ``seq`` and ``mac``
    recorded apart from the log, after the event was stored) closes that gap: the log must
    reach that event and hold it unchanged. It may go further (a crash between storing an
    event and recording the head).
    """
    prev, expected_seq, count = GENESIS, 1, 0
    head_seen = head is None
    for event in events:
        count += 1
        if event.seq != expected_seq:
            return ChainReport(False, count, event.seq, f"expected event {expected_seq} here")
        if event.prev != prev:
            return ChainReport(False, count, event.seq, "does not link to the event before it")
        if not hmac.compare_digest(event.mac, _mac(key, event.body())):
            return ChainReport(False, count, event.seq, "its contents were changed")
        if head is not None and event.seq == head[0]:
            if not hmac.compare_digest(event.mac, head[1]):
                return ChainReport(False, count, event.seq, "differs from the recorded head")
            head_seen = True
        prev, expected_seq = event.mac, expected_seq + 1
    if not head_seen:
        assert head is not None
        return ChainReport(False, count, expected_seq, f"the log ends before event {head[0]}")
    return ChainReport(True, count)
