"""Server-side video streams: a definition in the database, run by one worker at a time.

:class:`StreamService` (any replica) checks a source against the allow-list and stores the
stream (``POST /v1/streams``), lists them with their owner, state and figures, and deletes
them. :class:`StreamRunner` (worker processes) claims streams under leases
(:mod:`gateway.storage.streams`) and runs each in a :class:`StreamWorker`: a thread with a
:class:`~facerec.video.VideoStream` over ``open_source(..., retry_open=True)``, so a live
source that cannot be reached, or goes away, is retried with backoff (its state,
reconnects and last error are in the status), unless ``reconnect_for`` gives up after that
many seconds. The runner renews each lease every second with the stream's figures; a
worker that dies stops renewing, and another takes the stream over once the lease runs
out (``FACEREC_STREAM_LEASE_S``). A worker's events (``identified``, ``track_ended``, ...)
are stored under its lease, numbered on from the last one stored, and read by
``GET /v1/streams/{id}/events`` on any replica. At most ``max_streams`` streams that have
not ended exist at once in the deployment, and one worker runs at most as many.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from facerec.errors import FaceRecError
from facerec.video import SourceError, SourceOptions, VideoStream, open_source
from gateway.crypto.envelope import open_record, seal_record
from gateway.service.relay import SourceRelay
from gateway.service.sources import LIVE_SCHEMES, SourcePolicy, redact
from gateway.service.types import Caller
from gateway.service.video import VideoService
from gateway.storage.processes import process_name
from gateway.storage.schema import new_id
from gateway.storage.streams import (
    StoredStream,
    StreamLease,
    StreamRepository,
    TooManyStreamsStored,
)

log = logging.getLogger(__name__)
FEED_SIZE = 1000  # events kept per stream for late readers
BEAT_S = 1.0  # how often an owner renews its leases (and writes the figures)


class TooManyStreamsError(FaceRecError):
    code = "too_many_streams"
    http_status = 429
    retriable = True


@dataclass(frozen=True)
class StreamSpec:
    """What ``POST /v1/streams`` asked for. ``source`` is the URL to open (kept sealed:
    it may hold credentials); ``realtime`` paces a file like a camera."""

    source: str
    every: int = 1
    realtime: bool = True
    fpir: float | None = None
    threshold: float | None = None
    reconnect_for: float | None = None
    label: str = ""

    def settings(self) -> dict[str, Any]:
        """What is stored of it besides the source and the label."""
        return {
            "every": self.every,
            "realtime": self.realtime,
            "fpir": self.fpir,
            "threshold": self.threshold,
            "reconnect_for": self.reconnect_for,
        }


def source_context(stream_id: str) -> str:
    return f"stream-source/{stream_id}"


def stream_caller(stream: StoredStream) -> Caller:
    """Who a stream acts for: the key that started it, in its namespace and gallery; its
    id stands for the request id in the audit log."""
    return Caller(stream.key_id, stream.role, stream.id, stream.namespace, stream.gallery)


def status(stream: StoredStream) -> dict[str, Any]:
    """A stream as ``GET /v1/streams`` shows it."""
    stats = stream.stats
    return {
        "id": stream.id,
        "source": stream.shown_source,
        "label": stream.label,
        "namespace": stream.namespace,
        "every": int(stream.spec.get("every", 1)),
        "created_at": stream.created_at,
        "state": stream.state,
        "owner": stream.owner,
        "claims": stream.claims,
        "fps": stats.get("fps", 0.0),
        "latency_ms": stats.get("latency_ms", 0.0),
        "processed": stats.get("processed", 0),
        "dropped": stats.get("dropped", 0),
        "reconnects": stats.get("reconnects", 0),
        "tracks": stats.get("tracks", 0),
        "last_error": stream.last_error,
        "events": stream.events,
    }


class StreamService:
    """Streams as the API sees them, from any replica."""

    def __init__(
        self,
        streams: StreamRepository,
        audit: Callable[..., Any],
        sources: SourcePolicy,
        max_streams: int,
        source_key: bytes,
        lease_s: float,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.streams, self.audit, self.sources = streams, audit, sources
        self.max_streams, self.source_key, self.lease_s = max_streams, source_key, lease_s
        self.on_start = on_start  # wakes this process's runner, if it has one

    def start(self, spec: StreamSpec, caller: Caller) -> StoredStream:
        """Check the source against the allow-list and store the stream; a worker takes
        it within a second."""
        source = self.sources.check(spec.source)
        stream_id = new_id()
        values = {
            "key_id": caller.key_id,
            "role": caller.role,
            "namespace": caller.namespace,
            "gallery": caller.gallery,
            "label": spec.label,
            "spec": spec.settings(),
            "source": seal_record(self.source_key, source.encode(), source_context(stream_id)),
            "shown_source": redact(source),
        }
        try:
            stored = self.streams.create(stream_id, values, self.max_streams)
        except TooManyStreamsStored:
            raise TooManyStreamsError(
                f"at most {self.max_streams} streams run at once; delete one first",
                retry_after=5,
            ) from None
        self.audit("stream_start", "ok", stream_caller(stored))
        if self.on_start is not None:
            self.on_start()
        return stored

    def list(self) -> list[StoredStream]:
        return self.streams.all()

    def get(self, stream_id: str) -> StoredStream:
        return self.streams.get(stream_id)

    def delete(self, stream_id: str, caller: Caller) -> None:
        """Ask the stream's worker to stop (its open tracks end), wait until it has let the
        stream go (or its lease ran out), then forget the stream and its events."""
        self.streams.request_stop(stream_id)
        deadline = time.monotonic() + self.lease_s + 5
        while time.monotonic() < deadline:
            stream = self.streams.get(stream_id)
            if stream.owner is None or stream.lease_until is None:
                break
            if stream.lease_until.timestamp() < time.time():
                break  # its worker died: nobody writes to it any more
            time.sleep(0.1)
        self.streams.delete(stream_id)
        self.audit("stream_stop", "ok", Caller(caller.key_id, caller.role, stream_id))


class StreamWorker:
    """One stream in this process: its thread, its :class:`VideoStream`; events go to
    ``publish`` (False: the stream is no longer ours, stop)."""

    def __init__(
        self,
        video: VideoService,
        held: StreamLease,
        source: str,
        options: SourceOptions,
        publish: Callable[[int, dict[str, Any]], bool],
        sources: SourcePolicy | None = None,
    ) -> None:
        stream = held.stream
        self.held, self.id = held, stream.id
        self.source_url, self.shown_source = source, stream.shown_source
        self.video, self._publish = video, publish
        self.caller = stream_caller(stream)
        self.seq = stream.events
        self.lost = False
        self.error: str | None = None
        self._state = stream.state
        self._lock = threading.RLock()  # events from the stream's thread and the runner's
        spec = stream.spec
        self.analyzer = video.analyzer(
            self.caller, int(spec.get("every", 1)), spec.get("fpir"), spec.get("threshold")
        )
        # a live source is opened through a relay that refuses redirects (see relay.py)
        live = sources is not None and urlsplit(source).scheme.lower() in LIVE_SCHEMES
        self.relay = (
            SourceRelay(source, sources.host_allowed, sources.tls_context())
            if live and sources
            else None
        )
        try:
            self.source = open_source(self.relay.url if self.relay else source, options)
        except SourceError as exc:  # a file OpenCV cannot read (live sources are retried)
            self._close_relay()
            raise FaceRecError(str(self._hide(exc.message)), code=exc.code) from None
        self.stream = VideoStream(self.source, self.analyzer)
        self._thread = threading.Thread(target=self._run, name=f"stream {self.id[:8]}", daemon=True)
        self._thread.start()

    def _hide(self, text: str | None) -> str | None:
        """``text`` with the source URL's credentials masked (and the relay's URL shown
        as the source's)."""
        if text is None:
            return text
        if self.relay is not None:
            text = text.replace(self.relay.url, self.shown_source)
        return text.replace(self.source_url, self.shown_source)

    def _close_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def publish(self, doc: dict[str, Any]) -> None:
        with self._lock:
            if self.lost:
                return
            self.seq += 1
            if not self._publish(self.seq, {"seq": self.seq, **doc}):
                self.lost = True
                self.stream.stop()

    def _run(self) -> None:
        try:
            for _, result in self.stream:
                self.video.audit(result.events, self.caller, self.analyzer)
                for doc in self.video.messages(None, result.events, self.caller):
                    self.publish(doc)
                self.watch_state()
            ended = self.stream.finish()
            if not self.lost:
                self.video.audit(ended, self.caller, self.analyzer)
                for doc in self.video.messages(None, ended, self.caller):
                    self.publish(doc)
        except Exception as exc:  # a worker reports its failure in its status, never dies silently
            log.exception("stream %s failed", self.id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.source.close()
            self._close_relay()
            self.watch_state()

    def state(self) -> str:
        return "failed" if self.error else self.source.stats.state

    def last_error(self) -> str | None:
        refused = self.relay.refused if self.relay is not None else None
        return self.error or refused or self._hide(self.source.stats.last_error)

    def watch_state(self) -> None:
        """Publish a ``stream_state`` event when the source's state changed."""
        with self._lock:
            state = self.state()
            if state != self._state:
                self._state = state
                self.publish({"event": "stream_state", "state": state, "error": self.last_error()})

    def stop(self) -> None:
        self.stream.stop()
        self.source.close()
        self._close_relay()
        self._thread.join(timeout=self.source.options.read_timeout + 10)

    def figures(self) -> dict[str, Any]:
        s = self.stream.stats()
        return {
            "fps": round(s.fps, 2),
            "latency_ms": round(s.latency_ms, 1),
            "processed": s.processed,
            "dropped": s.dropped,
            "reconnects": s.reconnects,
            "tracks": s.tracks,
        }


class StreamRunner:
    """The streams this process runs: claimed, kept under lease, given back."""

    def __init__(
        self,
        streams: StreamRepository,
        video: VideoService,
        source_key: bytes,
        capacity: int,
        lease_s: float,
        options: Callable[[dict[str, Any]], SourceOptions] | None = None,
        poll_s: float = 1.0,
        sources: SourcePolicy | None = None,
    ) -> None:
        self.streams, self.video, self.source_key = streams, video, source_key
        self.sources = sources  # live sources are opened through a relay checking them
        self.capacity, self.lease_s, self.poll_s = capacity, lease_s, poll_s
        self.name = process_name()
        self._options = options or (
            lambda spec: SourceOptions(
                realtime=bool(spec.get("realtime", True)),
                reconnect_for=spec.get("reconnect_for"),
                retry_open=True,
            )
        )
        self._workers: dict[str, StreamWorker] = {}
        self._stoppers: list[threading.Thread] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop every stream here and give them back for other workers to take on."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        for worker in list(self._workers.values()):
            worker.stop()
            self._release(worker, "pending")
        self._workers.clear()
        for stopper in self._stoppers:
            stopper.join(timeout=30)

    def _run(self) -> None:
        last_beat = last_claim = 0.0
        while not self._stop.is_set():
            try:
                for worker in list(self._workers.values()):
                    worker.watch_state()
                    if not worker.running:
                        self._ended(worker)
                if time.monotonic() - last_beat >= BEAT_S:
                    last_beat = time.monotonic()
                    self._beat()
                free = self.capacity - len(self._workers)
                if free > 0 and (
                    self._wake.is_set() or time.monotonic() - last_claim >= self.poll_s
                ):
                    self._wake.clear()
                    last_claim = time.monotonic()
                    for held in self.streams.claim(self.name, self.lease_s, free):
                        self._start(held)
            except Exception:  # the runner must survive a database outage
                log.warning("stream runner: a round failed", exc_info=True)
            self._wake.wait(0.5)

    def _start(self, held: StreamLease) -> None:
        stream = held.stream
        if stream.claims > 1:
            log.warning("stream %s taken over (claim %d)", stream.id, stream.claims)
        try:
            source = open_record(
                self.source_key, stream.sealed_source, source_context(stream.id)
            ).decode()
            worker = StreamWorker(
                self.video,
                held,
                source,
                self._options(stream.spec),
                lambda seq, doc: self._publish(held, seq, doc),
                self.sources,
            )
        except FaceRecError as exc:
            self.streams.beat(held, self.lease_s, "failed", stream.stats, exc.message)
            self.streams.release(held, "failed")
            return
        self._workers[stream.id] = worker

    def _publish(self, held: StreamLease, seq: int, doc: dict[str, Any]) -> bool:
        """Store an event under the lease; while the database does not answer, try again
        until the lease would have run out (then the stream is another worker's)."""
        deadline = time.monotonic() + self.lease_s
        while True:
            try:
                return self.streams.publish(held, seq, doc, FEED_SIZE)
            except SQLAlchemyError:
                if time.monotonic() > deadline:
                    log.warning(
                        "stream %s: the database did not answer; letting it go", held.stream.id
                    )
                    return False
                time.sleep(0.2)

    def _beat(self) -> None:
        for worker in list(self._workers.values()):
            wanted = self.streams.beat(
                worker.held,
                self.lease_s,
                worker.state(),
                worker.figures(),
                worker.last_error(),
            )
            if wanted == "run":
                continue
            del self._workers[worker.id]
            if wanted is None:  # deleted or taken over: write nothing more
                worker.lost = True
                self._in_background(worker, release=False)
            else:  # asked to stop: end the tracks, then let it go
                self._in_background(worker, release=True)

    def _ended(self, worker: StreamWorker) -> None:
        """The stream ended by itself (a file's end, a source given up, a failure)."""
        del self._workers[worker.id]
        if worker.lost:
            return
        state = worker.state()
        final = state if state in ("ended", "failed") else "ended"
        self.streams.beat(worker.held, self.lease_s, final, worker.figures(), worker.last_error())
        self.streams.release(worker.held, final)

    def _in_background(self, worker: StreamWorker, release: bool) -> None:
        """Stop ``worker`` without holding up the runner; then give its stream back
        (``release``), its state as it is."""

        def stop() -> None:
            worker.stop()
            if release:
                self._release(worker)

        thread = threading.Thread(target=stop, name=f"stop {worker.id[:8]}", daemon=True)
        thread.start()
        self._stoppers = [t for t in self._stoppers if t.is_alive()] + [thread]

    def _release(self, worker: StreamWorker, state: str | None = None) -> None:
        try:
            self.streams.release(worker.held, state)
        except Exception:
            log.warning("stream %s: could not give it back", worker.id, exc_info=True)
