"""A budget of memory that decoding may take at once, shared by everything in flight.

Each request checks its own image against the per-image limits, but N concurrent requests
would still hold N frames. A :class:`DecodeBudget` makes the total bounded: a caller
reserves what decoding an image costs (counted from its header by
:func:`facerec.imaging.decode.decode_cost`: pixels times the bytes its channels and depth
take through decoding) before decoding it, and releases it when it is done with the
frame. When the budget is spent, callers wait up to ``wait`` seconds for room, then get a
retriable ``busy`` error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from facerec.errors import FaceRecError


class BusyError(FaceRecError):
    """Too much work in flight right now: retry later."""

    code = "busy"
    http_status = 503
    retriable = True


class DecodeBudget:
    """At most ``total`` bytes reserved at any time across threads.

    ``wait``: how long :meth:`reserve` waits for room before raising :class:`BusyError`.
    A single reservation larger than ``total`` waits for the whole budget (so one large
    image can always be served alone) rather than being refused.
    """

    def __init__(self, total: int, wait: float = 10.0) -> None:
        if total <= 0:
            raise ValueError("a decode budget must be positive")
        self.total = total
        self.wait = wait
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the ``with`` block."""
        need = min(max(nbytes, 0), self.total)
        deadline = time.monotonic() + self.wait
        with self._cond:
            while self._used + need > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError(
                        "too many large images are being processed; retry shortly",
                        retry_after=max(1, round(self.wait)),
                    )
                self._cond.wait(left)
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()
