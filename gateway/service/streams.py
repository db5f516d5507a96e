"""Server-side video streams: a worker per stream pulls an RTSP, HTTP or file source and
runs it through the shared pipeline, independent of HTTP.

:class:`StreamService` starts workers (``POST /v1/streams``), reports them, and stops them.
A worker is a thread running a :class:`~facerec.video.VideoStream` over
``open_source(..., retry_open=True)``: a live source that cannot be reached, or goes away,
is retried with backoff while the worker lives (its state, reconnects and last error are in
the status), unless ``reconnect_for`` gives up after that many seconds. Each worker keeps
its recent events in an :class:`EventFeed` (``GET /v1/streams/{id}/events`` reads it) and
audits ``identified``/``track_ended``. At most ``max_streams`` workers run at once;
finished streams stay listed (state ``ended``/``failed``) until deleted, the oldest
finished dropped beyond ``max_streams`` of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from facerec.errors import FaceRecError
from facerec.video import SourceError, SourceOptions, VideoStream, open_source
from gateway.errors import NotFoundError
from gateway.service.sources import InvalidSourceError, SourcePolicy, redact
from gateway.service.types import Caller
from gateway.service.video import VideoService

log = logging.getLogger(__name__)
FEED_SIZE = 1000  # events kept per stream for late readers


class TooManyStreamsError(FaceRecError):
    code = "too_many_streams"
    http_status = 429
    retriable = True


class EventFeed:
    """A stream's recent events, numbered from 1 (``seq``), the newest ``size`` kept.

    Written by the worker thread, read by any number of readers, including asyncio ones:
    :meth:`subscribe` gives an :class:`asyncio.Event` set (thread-safely) on every new
    event and when the feed closes."""

    def __init__(self, size: int = FEED_SIZE) -> None:
        self._items: deque[tuple[int, dict[str, Any]]] = deque(maxlen=size)
        self._seq = 0
        self.closed = False
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def last(self) -> int:
        with self._lock:
            return self._seq

    def publish(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._items.append((self._seq, {"seq": self._seq, **doc}))
        self._wake()

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._wake()

    def since(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        """Events after ``seq``, and how many of those fell off the feed already."""
        with self._lock:
            items = [doc for s, doc in self._items if s > seq]
            first = self._items[0][0] if self._items else self._seq + 1
        return items, max(0, first - seq - 1) if seq < self._seq else 0

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = [(lp, ev) for lp, ev in self._waiters if ev is not event]

    def _wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self.unsubscribe(event)


@dataclass(frozen=True)
class StreamSpec:
    """What ``POST /v1/streams`` asked for. ``source`` is the URL to open (kept private:
    it may hold credentials); ``realtime`` paces a file like a camera."""

    source: str
    every: int = 1
    realtime: bool = True
    fpir: float | None = None
    threshold: float | None = None
    reconnect_for: float | None = None
    label: str = ""


class StreamWorker:
    """One stream: its thread, its :class:`VideoStream`, its events."""

    def __init__(
        self, video: VideoService, spec: StreamSpec, caller: Caller, options: SourceOptions
    ) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.shown_source = redact(spec.source)
        self.created_at = datetime.now(UTC)
        self.video = video
        # events audited per stream; identified in the namespace it was started in
        self.caller = Caller(caller.key_id, caller.role, self.id, caller.namespace, caller.gallery)
        self.feed = EventFeed()
        self.analyzer = video.analyzer(self.caller, spec.every, spec.fpir, spec.threshold)
        try:
            self.source = open_source(spec.source, options)
        except SourceError as exc:  # a file OpenCV cannot read (live sources are retried)
            raise InvalidSourceError(str(self._hide(exc.message)), code=exc.code) from None
        self.stream = VideoStream(self.source, self.analyzer)
        self.error: str | None = None
        self._state = "connecting"
        self._state_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"stream {self.id[:8]}", daemon=True)
        self._thread.start()

    def _hide(self, text: str | None) -> str | None:
        """``text`` with the source URL's credentials masked."""
        if text is None or self.spec.source == self.shown_source:
            return text
        return text.replace(self.spec.source, self.shown_source)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            for _, result in self.stream:
                self.video.audit(result.events, self.caller, self.analyzer)
                for doc in self.video.messages(None, result.events, self.caller):
                    self.feed.publish(doc)
                self.watch_state()
            ended = self.stream.finish()
            self.video.audit(ended, self.caller, self.analyzer)
            for doc in self.video.messages(None, ended, self.caller):
                self.feed.publish(doc)
        except Exception as exc:  # a worker reports its failure in its status, never dies silently
            log.exception("stream %s failed", self.id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.source.close()
            self.watch_state()
            self.feed.close()

    def watch_state(self) -> None:
        """Publish a ``stream_state`` event when the source's state changed."""
        with self._state_lock:
            stats = self.source.stats
            state = "failed" if self.error else stats.state
            if state != self._state:
                self._state = state
                error = self.error or self._hide(stats.last_error)
                self.feed.publish({"event": "stream_state", "state": state, "error": error})

    def stop(self) -> None:
        self.stream.stop()
        self.source.close()
        self._thread.join(timeout=self.source.options.read_timeout + 10)

    def status(self) -> dict[str, Any]:
        s = self.stream.stats()
        state = "failed" if self.error else s.state
        return {
            "id": self.id,
            "source": self.shown_source,
            "label": self.spec.label,
            "namespace": self.caller.namespace,
            "every": self.spec.every,
            "created_at": self.created_at,
            "state": state,
            "fps": round(s.fps, 2),
            "latency_ms": round(s.latency_ms, 1),
            "processed": s.processed,
            "dropped": s.dropped,
            "reconnects": s.reconnects,
            "tracks": s.tracks,
            "last_error": self.error or self._hide(s.last_error),
            "events": self.feed.last,
        }


class StreamService:
    """The server-side streams of one gateway."""

    def __init__(
        self,
        video: VideoService,
        sources: SourcePolicy,
        max_streams: int,
        options: Callable[[StreamSpec], SourceOptions] | None = None,
    ) -> None:
        self.video, self.sources, self.max_streams = video, sources, max_streams
        self._options = options or (
            lambda spec: SourceOptions(
                realtime=spec.realtime, reconnect_for=spec.reconnect_for, retry_open=True
            )
        )
        self._workers: dict[str, StreamWorker] = {}
        self._starting = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="stream monitor", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        """State changes of sources between frames (an outage yields no frame)."""
        while not self._stop.wait(0.5):
            for worker in self.list():
                if worker.running:
                    worker.watch_state()

    def start(self, spec: StreamSpec, caller: Caller) -> StreamWorker:
        """Check the source against the allow-list and start its worker."""
        spec = replace(spec, source=self.sources.check(spec.source))
        with self._lock:
            running = sum(w.running for w in self._workers.values()) + self._starting
            if running >= self.max_streams:
                raise TooManyStreamsError(
                    f"at most {self.max_streams} streams run at once; delete one first",
                    retry_after=5,
                )
            self._starting += 1
        try:
            worker = StreamWorker(self.video, spec, caller, self._options(spec))
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            self._workers[worker.id] = worker
            self._forget_finished()
        self.video.faces.audit("stream_start", "ok", worker.caller)
        return worker

    def _forget_finished(self) -> None:
        done = [w for w in self._workers.values() if not w.running]
        for w in sorted(done, key=lambda w: w.created_at)[: max(0, len(done) - self.max_streams)]:
            del self._workers[w.id]

    def list(self) -> list[StreamWorker]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: w.created_at)

    def get(self, stream_id: str) -> StreamWorker:
        with self._lock:
            worker = self._workers.get(stream_id)
        if worker is None:
            raise NotFoundError(f"no stream {stream_id}")
        return worker

    def delete(self, stream_id: str, caller: Caller) -> None:
        worker = self.get(stream_id)
        worker.stop()
        with self._lock:
            self._workers.pop(stream_id, None)
        self.video.faces.audit("stream_stop", "ok", Caller(caller.key_id, caller.role, stream_id))

    def close(self) -> None:
        self._stop.set()
        for worker in self.list():
            worker.stop()
        self._monitor.join(timeout=5)
