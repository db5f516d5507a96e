"""A source and an analyzer run together, with the figures a status line shows; and
:func:`open_stream`, the one way ``facerec watch`` and :meth:`facerec.FaceRecognizer.watch`
set them up."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from facerec.batching import MicroBatcher
from facerec.pipeline import FacePipeline
from facerec.video.analyzer import FrameResult, StreamAnalyzer, TrackEvent, VideoConfig
from facerec.video.identity import MatchPolicy
from facerec.video.sources import Frame, FrameSource, SourceOptions, open_source


@dataclass(frozen=True)
class StreamStats:
    """``fps``: processed frames per second and ``latency_ms``: mean frame-to-result time
    (from the frame leaving the source to its result), both over the last ``window``
    seconds; ``dropped``/``reconnects``/``state``/``last_error``: the source's."""

    processed: int
    fps: float
    latency_ms: float
    tracks: int
    dropped: int
    reconnects: int
    state: str
    last_error: str | None


class VideoStream:
    """Iterating gives ``(frame, result)``, a :class:`Frame` and its :class:`FrameResult`,
    per processed frame until the source ends (or fails, or :meth:`stop`, or
    ``max_frames``); :meth:`finish` then ends the tracks."""

    def __init__(
        self,
        source: FrameSource,
        analyzer: StreamAnalyzer,
        max_frames: int | None = None,
        window: float = 2.0,
    ) -> None:
        self.source = source
        self.analyzer = analyzer
        self.max_frames = max_frames
        self.window = window
        self.processed = 0
        self._recent: deque[tuple[float, float]] = deque()  # (done at, latency s)
        self._stop = threading.Event()
        self._last: tuple[int, float] = (0, 0.0)

    def stop(self) -> None:
        """Make the iteration end after the frame in progress (any thread)."""
        self._stop.set()

    def __iter__(self) -> Iterator[tuple[Frame, FrameResult]]:
        while not self._stop.is_set():
            if self.max_frames is not None and self.processed >= self.max_frames:
                return
            frame = self.source.read(timeout=0.25)
            if frame is None:
                if self.source.stats.state in ("ended", "failed", "closed"):
                    return
                continue  # a live source between frames or reconnecting
            result = self.analyzer.process(
                frame.image, frame.index, frame.time, self.source.stats.dropped
            )
            done = time.monotonic()
            self.processed += 1
            self._last = (frame.index, frame.time)
            self._recent.append((done, done - frame.received))
            while self._recent and self._recent[0][0] < done - self.window:
                self._recent.popleft()
            yield frame, result

    def finish(self) -> list[TrackEvent]:
        """``track_ended`` for every track still open (call once, after iterating)."""
        frame, t = self._last
        return self.analyzer.finish(frame, t)

    def stats(self) -> StreamStats:
        recent = list(self._recent)
        fps = 0.0
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            fps = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        latency = sum(lat for _, lat in recent) / len(recent) * 1000 if recent else 0.0
        src = self.source.stats
        return StreamStats(
            self.processed,
            fps,
            latency,
            self.analyzer.tracks,
            src.dropped,
            src.reconnects,
            src.state,
            src.last_error,
        )


@contextmanager
def open_stream(
    pipeline: FacePipeline,
    uri: str,
    policy: MatchPolicy | None = None,
    config: VideoConfig | None = None,
    options: SourceOptions | None = None,
    max_frames: int | None = None,
) -> Iterator[VideoStream]:
    """A :class:`VideoStream` over :func:`open_source` ``(uri, options)`` and a
    :class:`StreamAnalyzer` (``policy``: who to name; None: tracking only) on a
    :class:`MicroBatcher` of its own; the source and the batcher are closed on leaving.
    Raises what :func:`open_source` raises for a source that cannot be opened."""
    source = open_source(uri, options)
    try:
        batcher = MicroBatcher(pipeline)
        try:
            yield VideoStream(source, StreamAnalyzer(batcher, policy, config), max_frames)
        finally:
            batcher.close()
    finally:
        source.close()
