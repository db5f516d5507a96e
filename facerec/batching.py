"""Micro-batching: requests that arrive together share one pipeline call.

Callers (request threads, video streams) hand work to a :class:`MicroBatcher` and wait;
one worker thread takes whatever has queued (up to ``max_batch`` items, waiting at most
``max_wait`` seconds after the first), runs the pipeline once per kind of work for all of
them, and hands each caller its own result. Three kinds of work:

- :meth:`MicroBatcher.analyze`: detect, align and embed the faces of a whole image (the
  gateway's requests);
- :meth:`MicroBatcher.detect`: boxes, scores and landmarks only (a video frame);
- :meth:`MicroBatcher.embed`: embeddings of aligned crops (the faces a video tracker
  chose), from every caller concatenated into one embedder call.

Images of a batch are split over the pipeline's worker threads, and so are the crops;
different kinds of work in one batch run at the same time.
Under load a request costs a share of a batch instead of a whole call; alone it waits at
most ``max_wait``. With the Triton backend the embedder calls go on to Triton's dynamic
batching, which merges them again across processes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from facerec.detection.types import Detections
from facerec.errors import FaceRecError
from facerec.pipeline import FacePipeline, ImageFaces

log = logging.getLogger(__name__)

Kind = Literal["analyze", "primary", "detect", "embed"]


@dataclass
class _Item:
    kind: Kind
    data: np.ndarray  # an image uint8[H, W, 3], or crops uint8[K, S, S, 3] for "embed"
    future: Future[Any] = field(default_factory=Future)


class BatcherClosedError(FaceRecError):
    code = "shutting_down"
    http_status = 503
    retriable = True


class MicroBatcher:
    """One worker thread in front of a :class:`FacePipeline`, shared by every caller."""

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
        self.batches = 0  # pipeline calls made (one per kind of work in a batch)
        self.images = 0  # images analysed or searched for faces
        self.crops = 0  # crops embedded
        self.calls: Counter[str] = Counter()  # pipeline calls per kind of work
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._groups = ThreadPoolExecutor(4, thread_name_prefix="micro-batch")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def analyze(self, image: np.ndarray, primary_only: bool = False) -> ImageFaces:
        """Faces of one image (blocks the calling thread until its batch is done)."""
        result: ImageFaces = self._submit("primary" if primary_only else "analyze", image)
        return result

    def detect(self, image: np.ndarray) -> Detections:
        """Faces found in one RGB uint8[H, W, 3] image, without embeddings."""
        result: Detections = self._submit("detect", image)
        return result

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """float32[K, D] unit embeddings of aligned crops uint8[K, S, S, 3] (flip-averaged
        when the pipeline is configured so)."""
        if len(crops) == 0:
            return np.zeros((0, self.pipeline.card.embedding_size), np.float32)
        result: np.ndarray = self._submit("embed", crops)
        return result

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._groups.shutdown(wait=False)

    def _submit(self, kind: Kind, data: np.ndarray) -> Any:
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        item = _Item(kind, data)
        self._queue.put(item)
        return item.future.result()

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
            del first  # no frame stays referenced while the worker waits for the next
        while not self._queue.empty():  # fail whatever arrived after close()
            item = self._queue.get_nowait()
            if item is not None:
                item.future.set_exception(BatcherClosedError("the service is shutting down"))

    def _round(self, first: _Item) -> bool:
        """One batch; True when a close() was seen. A function of its own so that the
        batch's images are released when it returns, not held until the next request."""
        items, stop = self._collect(first)
        groups = [
            [i for i in items if i.kind == kind]
            for kind in ("analyze", "primary", "detect", "embed")
            if any(i.kind == kind for i in items)
        ]
        if len(groups) == 1:
            self._process(groups[0])
        else:  # e.g. one stream's frame to detect and another's crops to embed: at once
            for done in [self._groups.submit(self._process, g) for g in groups]:
                done.result()
        return stop

    def _process(self, items: Sequence[_Item]) -> None:
        kind = items[0].kind
        with self._lock:
            self.batches += 1
            self.calls[kind] += 1
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            results: list[Any]
            if kind == "embed":
                sizes = [len(i.data) for i in items]
                with self._lock:
                    self.crops += sum(sizes)
                flat = self._embed(np.concatenate([i.data for i in items]))
                results = np.split(flat, np.cumsum(sizes)[:-1])
            else:
                with self._lock:
                    self.images += len(items)
                images = [i.data for i in items]
                if kind == "detect":
                    results = self.pipeline.parallel(self.pipeline.detect, images)
                else:
                    results = self.pipeline.analyze(images, primary_only=kind == "primary")
        except Exception as exc:  # each caller gets the failure; the worker lives on
            log.exception("batch of %d %s failed", len(items), kind)
            for item in items:
                item.future.set_exception(exc)
            return
        for item, result in zip(items, results, strict=True):
            item.future.set_result(result)

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        """All crops, split over the pipeline's worker threads in parts of at least 4."""
        parts = max(1, min(self.pipeline.workers, len(crops) // 4))
        if parts == 1:
            return self.pipeline.embed(crops)
        chunks = np.array_split(crops, parts)
        done = self.pipeline.parallel(lambda cs: [self.pipeline.embed(c) for c in cs], chunks)
        return np.concatenate(done)
