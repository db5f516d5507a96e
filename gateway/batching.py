"""Micro-batching: requests that arrive together share one pipeline call.

Request threads hand a decoded image to :meth:`MicroBatcher.analyze` and wait; one worker
thread takes whatever has queued (up to ``max_batch`` images, waiting at most ``max_wait``
seconds after the first), runs the pipeline once for all of them (which splits the batch
over its worker threads and embeds every crop in one call), and hands each caller its own
result. Under load a request costs a share of a batch instead of a whole call; alone it
waits at most ``max_wait``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from facerec.errors import FaceRecError
from facerec.pipeline import FacePipeline, ImageFaces

log = logging.getLogger(__name__)


@dataclass
class _Item:
    image: np.ndarray
    primary_only: bool
    future: Future[ImageFaces] = field(default_factory=Future)


class BatcherClosedError(FaceRecError):
    code = "shutting_down"
    http_status = 503
    retriable = True


class MicroBatcher:
    """One worker thread in front of a :class:`FacePipeline`."""

    def __init__(
        self,
        pipeline: FacePipeline,
        max_batch: int = 16,
        max_wait: float = 0.004,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def analyze(self, image: np.ndarray, primary_only: bool = False) -> ImageFaces:
        """Faces of one image (blocks the calling thread until its batch is done)."""
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        item = _Item(image, primary_only)
        self._queue.put(item)
        return item.future.result()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and whatever else arrives within ``max_wait``; True when a close()
        was seen (finish this batch, then stop)."""
        items = [first]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
        return items, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None or self._round(first):
                break
            del first  # no frame stays referenced while the worker waits

    def _round(self, first: _Item) -> bool:
        """One batch; True when a close() was seen. (A function of its own, so the
        batch's images are released when it returns.)"""
        items, stop = self._collect(first)
        for primary_only in (False, True):
            group = [i for i in items if i.primary_only == primary_only]
            if group:
                self._process(group, primary_only)
        return stop
        while not self._queue.empty():  # fail whatever arrived after close()
            item = self._queue.get_nowait()
            if item is not None:
                item.future.set_exception(BatcherClosedError("the service is shutting down"))

    def _process(self, items: Sequence[_Item], primary_only: bool) -> None:
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            results = self.pipeline.analyze([i.image for i in items], primary_only=primary_only)
        except Exception as exc:  # each caller gets the failure; the worker lives on
            log.exception("batch of %d failed", len(items))
            for item in items:
                item.future.set_exception(exc)
            return
        for item, result in zip(items, results, strict=True):
            item.future.set_result(result)
