"""Video sources: files, RTSP, HTTP MJPEG and local cameras, read by a thread that keeps
only the newest frame.

``open_source(uri)`` opens one; :meth:`FrameSource.read` hands out the newest frame not
yet taken. A consumer slower than a live source never builds up latency: frames it had no
time for are dropped (and counted). Live sources (RTSP, HTTP, camera) reconnect with
exponential backoff when they fail or stall; a file ends cleanly, either as fast as the
consumer takes frames (nothing dropped) or paced in real time like a camera.

OpenCV 4.11's FFmpeg backend does the reading. RTSP goes over TCP unless the user set
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (the pinned build's UDP attempt can hang for 30 s:
opencv/opencv#27091); open and read timeouts are open parameters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from facerec.errors import FaceRecError, InvalidArgumentError

log = logging.getLogger(__name__)

SourceKind = Literal["file", "rtsp", "http", "camera"]
SourceState = Literal["connecting", "streaming", "reconnecting", "ended", "failed", "closed"]
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mjpeg", ".mjpg", ".ts"}
FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


class SourceError(FaceRecError):
    """A video source cannot be opened or read.

    Codes: ``source_unavailable`` (nothing answers, or it answers with no video: retriable),
    ``not_a_video`` (a file OpenCV cannot decode).
    """

    code = "source_unavailable"
    http_status = 502
    retriable = True


@dataclass(frozen=True)
class Frame:
    """One frame taken from a source.

    ``index``: frame number since the source started (dropped frames count);
    ``time``: seconds, the position in a file or the time since a live stream started;
    ``image``: RGB uint8[H, W, 3]; ``received``: ``time.monotonic()`` when it was read
    from the source (where frame-to-result latency starts).
    """

    index: int
    time: float
    image: np.ndarray
    received: float


@dataclass(frozen=True)
class SourceStats:
    """What a source has done so far (a snapshot)."""

    state: SourceState
    frames_read: int  # taken from the source by the reader thread
    delivered: int  # handed to the consumer
    dropped: int  # read but replaced by a newer frame before the consumer took it
    reconnects: int
    last_error: str | None


@dataclass(frozen=True)
class SourceOptions:
    """How to open and read a source.

    Timeouts in seconds. ``realtime``: pace a file at its frame rate and drop frames the
    consumer has no time for, as with a camera (default: as fast as the consumer goes,
    nothing dropped). ``backoff``/``max_backoff``: the first and the longest wait between
    reconnection attempts of a live source; ``reconnect_for``: give up after this long
    without a frame (None: never). ``retry_open``: a live source that cannot be opened at
    first is retried like a lost one instead of raising (stream workers).
    """

    open_timeout: float = 10.0
    read_timeout: float = 10.0
    realtime: bool = False
    backoff: float = 0.5
    max_backoff: float = 8.0
    reconnect_for: float | None = None
    retry_open: bool = False


def source_kind(uri: str) -> SourceKind:
    """What ``uri`` names: an ``rtsp://`` or ``http(s)://`` stream, a camera index, or a
    file path (``file://`` allowed)."""
    low = uri.lower()
    if low.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if low.startswith(("http://", "https://")):
        return "http"
    if uri.isdigit():
        return "camera"
    if "://" in uri and not low.startswith("file://"):
        raise InvalidArgumentError(
            f"unsupported source {uri!r}: use a file, rtsp://, http(s):// or a camera index",
            code="invalid_source",
        )
    return "file"


def open_source(uri: str, options: SourceOptions | None = None) -> FrameSource:
    """Open ``uri`` and start its reader thread.

    Raises :class:`SourceError` when it cannot be opened (unless ``retry_open`` and it is
    live), ``file_not_found`` for a missing file, ``invalid_source`` for an unknown scheme.
    """
    kind = source_kind(uri)
    if kind == "file":
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise InvalidArgumentError(f"no such file: {path}", code="file_not_found")
        if not path.is_file():
            raise InvalidArgumentError(f"not a file: {path}", code="not_a_file")
        uri = str(path)
    return FrameSource(uri, kind, options or SourceOptions())


class FrameSource:
    """A source read by a background thread; :meth:`read` returns the newest frame."""

    def __init__(self, uri: str, kind: SourceKind, options: SourceOptions) -> None:
        self.uri = uri
        self.kind = kind
        self.options = options
        self.live = kind != "file"
        self.fps = 0.0  # nominal frame rate, when the source tells it
        self.frame_count = 0  # files: frames in the file, when known
        self.width = self.height = 0
        self._cond = threading.Condition()
        self._slot: tuple[int, float, np.ndarray, float] | None = None
        self._stats = SourceStats("connecting", 0, 0, 0, 0, None)
        self._closed = False
        self._closing = threading.Event()
        self._start = time.monotonic()
        cap = None
        if not (self.live and options.retry_open):
            cap = self._open()  # raises if the source cannot be opened
        self._thread = threading.Thread(
            target=self._run, args=(cap,), name=f"source {kind}", daemon=True
        )
        self._thread.start()

    @property
    def stats(self) -> SourceStats:
        with self._cond:
            return self._stats

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken, waiting for one up to ``timeout`` seconds
        (None: as long as it takes). Returns None when the source has ended, failed or
        was closed, or on timeout (then ``stats.state`` is still live)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot is None:
                if self._stats.state in ("ended", "failed", "closed"):
                    return None
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)
            index, stamp, bgr, received = self._slot
            self._slot = None
            self._stats = replace(self._stats, delivered=self._stats.delivered + 1)
            self._cond.notify_all()
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Frame(index, stamp, rgb, received)

    def close(self) -> None:
        """Stop the reader thread and release the source (idempotent)."""
        with self._cond:
            self._closed = True
            self._closing.set()
            if self._stats.state not in ("ended", "failed"):
                self._stats = replace(self._stats, state="closed")
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.options.read_timeout + 5)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reader thread --------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture:
        ms = int(self.options.open_timeout * 1000)
        read_ms = int(self.options.read_timeout * 1000)
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
        if self.kind == "camera":
            cap = cv2.VideoCapture(int(self.uri))
        else:
            if self.kind == "rtsp" and FFMPEG_OPTIONS not in os.environ:
                os.environ[FFMPEG_OPTIONS] = "rtsp_transport;tcp"
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, timeouts if self.live else [])
        if not cap.isOpened():
            cap.release()
            if self.kind == "file":
                raise SourceError(f"cannot decode {self.uri} as a video", code="not_a_video")
            what = "camera" if self.kind == "camera" else "stream"
            raise SourceError(f"cannot open {what} {self.uri}")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0 < self.fps <= 240:
            self.fps = 0.0
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.kind == "file":
            self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        return cap

    def _set(self, **changes: Any) -> None:
        with self._cond:
            if self._closed:
                changes.pop("state", None)  # "closed" stays
            self._stats = replace(self._stats, **changes)
            self._cond.notify_all()

    def _stopped(self, wait: float = 0.0) -> bool:
        """Whether close() was called, after waiting up to ``wait`` seconds for it."""
        return self._closing.wait(wait) if wait > 0 else self._closing.is_set()

    def _run(self, cap: cv2.VideoCapture | None) -> None:
        index = 0
        lost_since: float | None = None
        backoff = self.options.backoff
        try:
            while not self._stopped():
                if cap is None:
                    try:
                        cap = self._open()
                    except SourceError as exc:
                        lost_since = lost_since or time.monotonic()
                        if self._give_up(lost_since, str(exc)):
                            return
                        self._stopped(backoff)
                        backoff = min(backoff * 2, self.options.max_backoff)
                        continue
                    if self._stats.frames_read:
                        self._set(reconnects=self._stats.reconnects + 1)
                    log.info("source %s open (%dx%d)", self.uri, self.width, self.height)
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    cap.release()
                    cap = None
                    if not self.live:
                        self._set(state="ended")
                        return
                    lost_since = lost_since or time.monotonic()
                    log.warning("source %s lost; reconnecting", self.uri)
                    if self._give_up(lost_since, "the stream stopped sending frames"):
                        return
                    self._set(state="reconnecting", last_error="the stream stopped sending")
                    continue
                lost_since = None
                backoff = self.options.backoff
                stamp = self._stamp(cap, index)
                self._hand_over(index, stamp, bgr)
                index += 1
        finally:
            if cap is not None:
                cap.release()

    def _give_up(self, lost_since: float, error: str) -> bool:
        limit = self.options.reconnect_for
        if limit is not None and time.monotonic() - lost_since >= limit:
            self._set(state="failed", last_error=error)
            return True
        self._set(state="reconnecting", last_error=error)
        return False

    def _stamp(self, cap: cv2.VideoCapture, index: int) -> float:
        if self.live:
            return time.monotonic() - self._start
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        if ms >= 0 and (ms > 0 or index == 0):
            return float(ms) / 1000.0
        return index / self.fps if self.fps else 0.0

    def _hand_over(self, index: int, stamp: float, bgr: np.ndarray) -> None:
        now = time.monotonic()
        if not self.live and self.options.realtime:
            delay = self._start + stamp - now
            if delay > 0 and self._stopped(delay):
                return
            now = time.monotonic()
        with self._cond:
            if not self.live and not self.options.realtime:
                while self._slot is not None and not self._closed:
                    self._cond.wait()  # a file read as fast as possible: drop nothing
            if self._closed:
                return
            dropped = self._stats.dropped + (self._slot is not None)
            self._slot = (index, stamp, bgr, now)
            self._stats = replace(
                self._stats, state="streaming", frames_read=index + 1, dropped=dropped
            )
            self._cond.notify_all()
