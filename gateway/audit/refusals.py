"""Refused requests without a valid key, audited in bounded space.

A request refused for a missing, malformed, unknown or revoked key (or refused because its
client made too many such attempts) comes from someone who holds no key, so it must not be
able to grow the audit log at the rate it is sent. :class:`RefusalLog` writes the first
refusal of a client in a window as its own event (with the client's address and request
id); the ones after it in that window are only counted, and one event with ``count`` says
how many there were when the window closes. At most ``max_clients`` clients get events of
their own in a window; the rest are counted together in one event whose ``client`` is
``*``. So a window adds at most ``2 * max_clients + 1`` events, whatever is sent.

Windows close when a later refusal notices them (each call), on :meth:`flush` (a timer
calls it every few seconds) and on :meth:`close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

OTHERS = "*"  # the client of an event that counts refusals of many clients


@dataclass
class _Window:
    opened: float
    count: int = 0  # refusals after the one written as its own event
    reason: str = "refused"


class RefusalLog:
    """Aggregates refusals per client; ``append`` writes one audit event (fields of
    :class:`~gateway.audit.chain.AuditEvent`)."""

    def __init__(
        self,
        append: Callable[..., Any],
        window_s: float = 60.0,
        max_clients: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.append, self.window_s, self.max_clients = append, window_s, max_clients
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._others: _Window | None = None
        self._period_start = clock()
        self._detailed = 0  # clients given their own event in this period
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def start(self, every_s: float | None = None) -> None:
        """Close due windows every ``every_s`` seconds (a quarter window by default)."""
        interval = every_s or max(0.5, self.window_s / 4)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.flush()
                except Exception:  # the timer must survive a failed write
                    log.exception("writing aggregated refusals failed")

        self._timer = threading.Thread(target=loop, name="refusal-log", daemon=True)
        self._timer.start()

    def refused(self, client: str | None, action: str, **fields: Any) -> None:
        """One refused request from ``client`` (``fields``: key_id, role, request_id)."""
        who = client or "unknown"
        write: dict[str, Any] | None = None
        with self._lock:
            due = self._due(self.clock())
            window = self._windows.get(who)
            if window is not None:
                window.count += 1
            elif self._detailed < self.max_clients:
                self._windows[who] = _Window(self.clock(), reason=action)
                self._detailed += 1
                write = {"action": action, "outcome": "refused", "client": who, **fields}
            else:
                if self._others is None:
                    self._others = _Window(self.clock(), reason=action)
                self._others.count += 1
        for event in due:
            self.append(**event)
        if write is not None:
            self.append(**write)

    def flush(self, everything: bool = False) -> None:
        """Write the summary events of the windows that have closed (all, when
        ``everything``)."""
        with self._lock:
            due = self._due(self.clock(), everything)
        for event in due:
            self.append(**event)

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        self.flush(everything=True)

    def _due(self, now: float, everything: bool = False) -> list[dict[str, Any]]:
        """Summary events of closed windows (removed from the table); under the lock."""
        events = []
        for who, window in list(self._windows.items()):
            if everything or now - window.opened >= self.window_s:
                del self._windows[who]
                if window.count:
                    events.append(self._summary(who, window))
        if everything or now - self._period_start >= self.window_s:
            self._period_start, self._detailed = now, len(self._windows)
            if self._others is not None and self._others.count:
                events.append(self._summary(OTHERS, self._others))
            self._others = None
        return events

    @staticmethod
    def _summary(who: str, window: _Window) -> dict[str, Any]:
        return {
            "action": window.reason,
            "outcome": "refused",
            "client": who,
            "count": window.count,
        }
