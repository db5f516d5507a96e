"""Video in the gateway, independent of HTTP: frames sent by clients (``WS /v1/stream``) and
the server-side stream workers (:mod:`gateway.service.streams`) share what lives here.

Every stream gets its own :class:`~facerec.video.StreamAnalyzer` (tracker and identity
votes) over the service's one pipeline and :class:`~facerec.batching.MicroBatcher` (the
:class:`~gateway.service.analyzer.Analyzer`'s, used directly), so the frames and face crops
of every WebSocket and every stream are batched together with the REST requests.
Identities are decided through :class:`IndexPolicy`, the :class:`~facerec.video.MatchPolicy`
of the gateway's index for one caller (candidates from
:meth:`IdentificationService.match_embeddings`, the threshold from
:meth:`IdentificationService.operating_point`), exactly as ``POST /v1/identify`` decides
for that caller: only the subjects of its namespace (and gallery) are searched, the operating point
is the one for the size of that gallery, and a caller without the admin role may not
loosen it (``threshold_not_allowed``) nor see the similarity of a face left unnamed (the
score of a candidate below the threshold). Results name subjects by their name (``match``)
and id (``subject_id``). ``identified`` and ``track_ended`` events are audited like
identifications: subject id, similarity and threshold, never an image or an embedding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.imaging.decode import DecodeLimits
from facerec.matching import Candidate
from facerec.openset import OperatingPoint
from facerec.video import FrameResult, StreamAnalyzer, TrackEvent, VideoConfig
from gateway.service.analyzer import Analyzer
from gateway.service.identification import IdentificationService
from gateway.service.matching import privileged
from gateway.service.types import Audit, Caller
from gateway.settings import Settings
from gateway.storage.subjects import SubjectRepository

FRAME_FORMATS = frozenset({"JPEG", "PNG"})
AUDITED_EVENTS = {"identified": "stream_identified", "track_ended": "stream_track_ended"}
# Frame errors that are limits: the connection is closed (see gateway.api.routes.live).
LIMIT_CODES = frozenset({"image_too_large", "decompression_bomb", "file_too_large"})


class TooManyConnectionsError(FaceRecError):
    """Every video connection slot is taken."""

    code = "too_many_connections"
    http_status = 503
    retriable = True


@dataclass(frozen=True)
class LiveLimits:
    """Per connection: ``max_frame_bytes`` (one message), ``max_frame_pixels`` (one frame,
    from its header), ``max_fps`` (messages, frames or text, a client may send per second,
    a burst of one second allowed); in all: ``max_connections`` open at once, of which one
    API key holds at most ``max_connections_per_key``, and at most ``frames_per_key`` of
    its frames are analysed at once (the others wait, undecoded: one key's sockets cannot
    take every core from the REST routes and other keys). Timeouts in seconds: the
    key in the first message (``auth_timeout_s``), no message at all (``idle_timeout_s``),
    a result the client does not take (``send_timeout_s``)."""

    max_frame_bytes: int = 4 * 1024 * 1024
    max_frame_pixels: int = 3840 * 2160
    max_fps: float = 30.0
    max_connections: int = 16
    auth_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 10.0
    max_connections_per_key: int = 8
    frames_per_key: int = 2  # frames of one API key analysed at once

    @staticmethod
    def from_settings(settings: Settings) -> LiveLimits:
        return LiveLimits(
            settings.stream_max_frame_bytes,
            settings.stream_max_frame_pixels,
            settings.stream_max_fps,
            settings.stream_max_connections,
            settings.stream_auth_timeout_s,
            settings.stream_idle_timeout_s,
            settings.stream_send_timeout_s,
            settings.stream_max_connections_per_key,
            settings.stream_frames_per_key,
        )


class IndexPolicy:
    """:class:`~facerec.video.MatchPolicy` over the gateway's index for ``caller``:
    candidates from :meth:`IdentificationService.match_embeddings` (its namespace and
    gallery only); the operating point from :meth:`IdentificationService.operating_point`
    (for that gallery's size; a looser one than the service's is refused unless ``caller``
    is an admin), recomputed every ``refresh_s`` seconds (the gallery grows and shrinks
    while a stream runs)."""

    def __init__(
        self,
        identification: IdentificationService,
        caller: Caller,
        fpir: float | None = None,
        threshold: float | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        self.identification, self.caller, self.refresh_s = identification, caller, refresh_s
        self.fpir, self.threshold = fpir, threshold
        # a bad operating point fails here
        self._point = identification.operating_point(fpir, threshold, caller)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    @property
    def point(self) -> OperatingPoint:
        with self._lock:
            if time.monotonic() - self._at >= self.refresh_s:
                self._point = self.identification.operating_point(
                    self.fpir, self.threshold, self.caller
                )
                self._at = time.monotonic()
            return self._point

    @property
    def last(self) -> OperatingPoint:
        """The operating point the latest decisions were made at, not rechecked (:attr:`point`
        raises once the gallery grew past a threshold this caller may use)."""
        with self._lock:
            return self._point

    def search(self, probes: np.ndarray, top_k: int = 5) -> list[list[Candidate]]:
        return self.identification.match_embeddings(probes, top_k, self.caller)


class SubjectNames:
    """Subject names by id, each cached for ``ttl_s`` seconds (renames show within that;
    a deleted subject has no name)."""

    def __init__(self, subjects: SubjectRepository, ttl_s: float = 5.0) -> None:
        self.subjects, self.ttl_s = subjects, ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, subject_ids: Iterable[str]) -> dict[str, str | None]:
        now = time.monotonic()
        wanted = set(subject_ids)
        with self._lock:
            fresh = {
                s: v for s, (t, v) in self._cache.items() if s in wanted and now - t < self.ttl_s
            }
        missing = sorted(wanted - fresh.keys())
        if missing:
            found = self.subjects.names(missing)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                for s in missing:
                    fresh[s] = found.get(s)
                    self._cache[s] = (now, found.get(s))
        return fresh


def _token_bucket(rate: float) -> Any:
    """A function that takes one token (True) or says there is none (False); ``rate``
    tokens a second, at most ``rate`` (one second's worth) saved up."""
    state = {"tokens": max(rate, 1.0), "at": time.monotonic()}

    def take() -> bool:
        now = time.monotonic()
        state["tokens"] = min(max(rate, 1.0), state["tokens"] + (now - state["at"]) * rate)
        state["at"] = now
        if state["tokens"] < 1.0:
            return False
        state["tokens"] -= 1.0
        return True

    return take


class VideoService:
    """What the video routes and the stream workers call."""

    def __init__(
        self,
        analyzer: Analyzer,
        identification: IdentificationService,
        subjects: SubjectRepository,
        audit: Audit,
        limits: LiveLimits,
    ) -> None:
        self.analysis, self.identification, self.limits = analyzer, identification, limits
        self._audit = audit  # appends one event; :meth:`audit` turns a frame's events into them
        self.names = SubjectNames(subjects)
        self.decode_limits = DecodeLimits(
            max_bytes=limits.max_frame_bytes,
            max_pixels=limits.max_frame_pixels,
            max_decode_bytes=analyzer.limits.max_decode_bytes,
        )
        # Frames are analysed here, not in the event loop's default pool, so that video
        # connections never take the threads that REST requests run in.
        self.executor = ThreadPoolExecutor(limits.max_connections, thread_name_prefix="live")
        self._per_key: dict[str | None, int] = {}  # open connections by API key
        self._busy: dict[str | None, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- connections --------------------------------------------------------------------------
    def acquire(self, key_id: str | None) -> None:
        """Take a connection slot for an authenticated caller's key, or
        :class:`TooManyConnectionsError` (all slots taken, or the key's share)."""
        with self._lock:
            if sum(self._per_key.values()) >= self.limits.max_connections:
                raise TooManyConnectionsError(
                    f"at most {self.limits.max_connections} video connections at once",
                    retry_after=1,
                )
            held = self._per_key.get(key_id, 0)
            if key_id is not None and held >= self.limits.max_connections_per_key:
                raise TooManyConnectionsError(
                    f"at most {self.limits.max_connections_per_key} video connections at "
                    "once per API key",
                    retry_after=1,
                )
            self._per_key[key_id] = held + 1

    def release(self, key_id: str | None) -> None:
        with self._lock:
            held = self._per_key.pop(key_id, 0) - 1
            if held > 0:
                self._per_key[key_id] = held

    @contextmanager
    def frame_turn(self, key_id: str | None) -> Iterator[None]:
        """Hold one of ``frames_per_key`` turns of ``key_id`` while a frame is analysed."""
        with self._lock:
            turns = self._busy.get(key_id)
            if turns is None:
                turns = threading.BoundedSemaphore(self.limits.frames_per_key)
                self._busy[key_id] = turns
        with turns:
            yield

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(self._per_key.values())

    def rate_limiter(self) -> Any:
        """A per-connection frame limiter (see :func:`_token_bucket`)."""
        return _token_bucket(self.limits.max_fps)

    # -- analysis ---------------------------------------------------------------------------
    def analyzer(
        self,
        caller: Caller,
        every: int = 1,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> StreamAnalyzer:
        """A new stream's tracker and identity votes over the shared batcher, deciding for
        ``caller`` (:class:`IndexPolicy`)."""
        if not 1 <= every <= 30:
            raise InvalidArgumentError("every must be between 1 and 30", code="invalid_request")
        policy = IndexPolicy(self.identification, caller, fpir, threshold)
        return StreamAnalyzer(self.analysis.batcher, policy, VideoConfig(detect_every=every))

    def messages(
        self,
        result: FrameResult | None,
        events: Sequence[TrackEvent],
        caller: Caller | None = None,
    ) -> list[dict[str, Any]]:
        """The frame's JSON result (if any), then its events: ``match``/``subject`` are
        subject names, ``subject_id`` their ids. For a ``caller`` without the admin role an
        unnamed face has no ``similarity`` (it would be a candidate's below the threshold)."""
        hide_scores = not privileged(caller)
        ids = {f.match for f in result.faces if f.match} if result else set()
        ids |= {e.data["subject"] for e in events if e.data.get("subject")}
        names = self.names.get(ids)
        out: list[dict[str, Any]] = []
        if result is not None:
            doc = result.to_dict()
            for face in doc["faces"]:
                face["subject_id"] = face["match"]
                face["match"] = names.get(face["match"]) if face["match"] else None
                if hide_scores and face["subject_id"] is None:
                    face["similarity"] = None
            out.append(doc)
        for event in events:
            doc = event.to_dict()
            if "subject" in doc:
                doc["subject_id"] = doc["subject"]
                doc["subject"] = names.get(doc["subject"]) if doc["subject"] else None
            out.append(doc)
        return out

    def audit(self, events: Sequence[TrackEvent], caller: Caller, analyzer: StreamAnalyzer) -> None:
        """``identified`` and ``track_ended`` as audit events (subject id, similarity, and
        the threshold ``analyzer`` decides at)."""
        if not any(e.event in AUDITED_EVENTS for e in events):
            return
        policy = analyzer.policy
        threshold: float | None = None
        if isinstance(policy, IndexPolicy):
            threshold = policy.last.threshold
        elif policy is not None:
            threshold = policy.point.threshold
        for event in events:
            action = AUDITED_EVENTS.get(event.event)
            if action is None:
                continue
            subject = event.data.get("subject")
            self._audit(
                action,
                "match" if subject else "no_match",
                caller,
                subject=subject,
                score=event.data.get("similarity"),
                threshold=threshold,
            )

    def session(
        self,
        caller: Caller,
        every: int = 1,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> LiveSession:
        return LiveSession(self, caller, self.analyzer(caller, every, fpir, threshold))


class LiveSession:
    """The frames one WebSocket client sends, analysed one at a time (the route keeps only
    the newest frame waiting, so a client never queues work)."""

    def __init__(self, video: VideoService, caller: Caller, analyzer: StreamAnalyzer) -> None:
        self.video, self.caller, self.analyzer = video, caller, analyzer
        self._last = (0, 0.0)

    def process(self, data: bytes, frame: int, t: float, dropped: int) -> list[dict[str, Any]]:
        """The messages for one frame (JPEG or PNG bytes): its result, then its events.

        Decoded as every upload is (:meth:`Analyzer.decoded`): the header checked first
        (format, pixels: no pixel decoded for a frame over the limits), what decoding it
        costs reserved in the budget shared with every request until its analysis is
        done, and memory given back after a large frame. Raises the image codes of
        :func:`~facerec.imaging.decode.decode_image`, ``unsupported_format`` for an image
        that is not JPEG or PNG, ``busy`` when the budget stays full."""
        with (
            self.video.frame_turn(self.caller.key_id),
            self.video.analysis.decoded(data, self.video.decode_limits, FRAME_FORMATS) as image,
        ):
            result = self.analyzer.process(image, frame, t, dropped)
            del image
        self._last = (frame, t)
        self.video.audit(result.events, self.caller, self.analyzer)
        return self.video.messages(result, result.events, self.caller)

    def finish(self) -> list[dict[str, Any]]:
        """``track_ended`` for the tracks still open (the connection is closing)."""
        events = self.analyzer.finish(*self._last)
        self.video.audit(events, self.caller, self.analyzer)
        return self.video.messages(None, events, self.caller)
