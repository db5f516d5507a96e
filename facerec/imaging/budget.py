"""A budget of pixels that may be decoded at once, shared by everything in flight.

Each request checks its own image against the per-image limits, but N concurrent requests
would still hold N frames. A :class:`PixelBudget` makes the total bounded: a caller reserves
an image's pixels (read from the header with :func:`facerec.imaging.decode.probe_image`)
before decoding it and releases them when it is done with the frame. When the budget is
spent, callers wait up to ``wait`` seconds for room, then get a retriable ``busy`` error.
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


class PixelBudget:
    """At most ``total`` pixels reserved at any time across threads.

    ``wait``: how long :meth:`reserve` waits for room before raising :class:`BusyError`.
    A single reservation larger than ``total`` waits for the whole budget (so one large
    image can always be served alone) rather than being refused.
    """

    def __init__(self, total: int, wait: float = 10.0) -> None:
        if total <= 0:
            raise ValueError("a pixel budget must be positive")
        self.total = total
        self.wait = wait
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the duration of the ``with`` block."""
        need = min(max(pixels, 0), self.total)
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
