"""Per-client limit on failed authentications: a token bucket per client address.

Each failed authentication takes a token from its client's bucket; the bucket refills at
``per_minute`` tokens a minute up to ``per_minute``. A client whose bucket is empty is
refused with 429 (and a ``Retry-After``) before its key is even looked at, so guessing keys
costs a constant, small amount of work. The table of clients is bounded: past
``max_clients`` the least recently seen is forgotten (which can only help that client).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from facerec.errors import FaceRecError


class TooManyRequestsError(FaceRecError):
    """Too many failed attempts (or queued jobs) from this caller: retry later."""

    code = "too_many_requests"
    http_status = 429
    retriable = True


class FailureThrottle:
    """Thread-safe; ``clock`` is injectable for tests (seconds, monotonic)."""

    def __init__(
        self,
        per_minute: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        with self._lock:
            if client not in self._buckets:
                return None
            tokens = self._tokens(client, self.clock())
        if tokens >= 1.0:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def check(self, client: str) -> None:
        """Raise :class:`TooManyRequestsError` when ``client`` has no attempts left."""
        wait = self.retry_after(client)
        if wait is not None:
            raise TooManyRequestsError(
                "too many failed authentications from this client; retry later",
                retry_after=wait,
            )

    def failed(self, client: str) -> None:
        """Record one failed authentication of ``client``."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens(client, now)
            self._buckets[client] = (max(0.0, tokens - 1.0), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
