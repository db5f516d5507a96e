"""One stream's frames in, faces with track ids and names out, plus track events.

:class:`StreamAnalyzer` holds a stream's tracker and the identity of each track; the
networks are the shared :class:`~facerec.batching.MicroBatcher`'s, so frames and crops of
every stream that uses the same batcher are batched together.

Per processed frame: the tracker predicts every track to the frame's time; on every
``detect_every``-th frame the detector runs and detections are associated with tracks.
Detections no track claims are embedded at once and either re-attach a lost track (same
appearance, within the window) or start a new one. Tracks already known are re-embedded
when their box grew by ``embed_growth`` since their last embedding, or every
``embed_every`` frames, at most ``embed_budget`` of them per frame (the longest-waiting
first). Each embedding is a vote for the track's identity (:mod:`facerec.video.identity`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facerec.batching import MicroBatcher
from facerec.detection.types import Detections
from facerec.errors import InvalidArgumentError
from facerec.video.identity import (
    IdentityVote,
    MatchPolicy,
    VoteConfig,
    inside_fraction,
    vote_weight,
)
from facerec.video.tracker import Track, Tracker, TrackerConfig

EVENTS = ("track_started", "identified", "track_lost", "track_resumed", "track_ended")


@dataclass(frozen=True)
class VideoConfig:
    """``detect_every``: run the detector on every N-th processed frame (the tracker
    predicts in between), and whenever ``max_detect_gap`` seconds of the stream passed
    since it last ran (frames dropped behind a slow consumer, a slow camera: predictions
    across longer gaps would lose faces). ``embed_every``: re-embed a track every K processed frames
    (every ``embed_every_unknown`` while it has no name and fewer than ``eager_votes``
    votes, so a new face is named sooner and a stranger does not cost forever);
    ``embed_growth``: or when its box area grew by this fraction; ``embed_budget``: at most
    this many such re-embeddings per frame (new faces are always embedded). ``top_k``:
    candidates asked of the matching policy per embedding."""

    detect_every: int = 1
    max_detect_gap: float = 0.3
    embed_every: int = 10
    embed_every_unknown: int = 1
    eager_votes: int = 6
    embed_growth: float = 0.2
    embed_budget: int = 4
    top_k: int = 3
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)

    def __post_init__(self) -> None:
        if min(self.detect_every, self.embed_every, self.embed_every_unknown) < 1:
            raise InvalidArgumentError("detect_every and embed_every must be >= 1")


@dataclass(frozen=True)
class FaceResult:
    """A tracked face in one frame; ``box`` float x1, y1, x2, y2 in frame pixels (the
    detection on detection frames, the tracker's prediction in between)."""

    track_id: int
    box: tuple[float, float, float, float]
    score: float
    match: str | None
    similarity: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "match": self.match,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
        }


@dataclass(frozen=True)
class TrackEvent:
    """``event`` is one of :data:`EVENTS`; ``data`` holds its fields (``subject``,
    ``similarity``, ``votes`` for ``identified``; ``duration``, ``subject`` for
    ``track_ended``; ...)."""

    event: str
    track_id: int
    frame: int
    time: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "track_id": self.track_id,
            "frame": self.frame,
            "time": round(self.time, 3),
            **self.data,
        }


@dataclass(frozen=True)
class FrameResult:
    """What one processed frame gives: its faces, the events it caused, and the source's
    dropped-frame count so far."""

    frame: int
    time: float
    faces: list[FaceResult]
    dropped: int
    events: list[TrackEvent]
    detected: bool  # whether the detector ran on this frame

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: ``{"frame", "time", "faces": [...], "dropped"}``."""
        return {
            "frame": self.frame,
            "time": round(self.time, 3),
            "faces": [f.to_dict() for f in self.faces],
            "dropped": self.dropped,
        }


@dataclass
class _TrackInfo:
    identity: IdentityVote
    embedded_frame: int = -(10**9)
    embedded_area: float = 0.0


class StreamAnalyzer:
    """Tracking and identity for one stream, over a shared batcher.

    ``policy`` decides identities (None: tracking only, every ``match`` null). One
    analyzer per stream; its :meth:`process` is not meant to be called from two threads at
    once (a lock enforces it).
    """

    def __init__(
        self,
        batcher: MicroBatcher,
        policy: MatchPolicy | None = None,
        config: VideoConfig | None = None,
    ) -> None:
        self.batcher = batcher
        self.pipeline = batcher.pipeline
        self.policy = policy
        self.config = config or VideoConfig()
        self.tracker = Tracker(self.config.tracker)
        self.processed = 0
        self.embedded = 0  # crops embedded for this stream
        self._since_detect = self.config.detect_every  # frames since the detector ran
        self._detected_at = -float("inf")
        self._info: dict[int, _TrackInfo] = {}
        self._lock = threading.Lock()

    @property
    def tracks(self) -> int:
        """Tracks currently seen."""
        return sum(1 for t in self.tracker.active() if t.misses == 0 and t.reported)

    def process(self, image: np.ndarray, frame: int, time: float, dropped: int = 0) -> FrameResult:
        """Track and identify the faces of ``image`` (RGB uint8[H, W, 3]), frame number
        ``frame`` at ``time`` seconds of the stream (times must not go backwards)."""
        with self._lock:
            return self._process(image, frame, time, dropped)

    def finish(self, frame: int, time: float) -> list[TrackEvent]:
        """End every track (the stream is over): their ``track_ended`` events."""
        with self._lock:
            return [
                self._ended(track, frame, time)
                for track in self.tracker.end_all()
                if track.reported
            ]

    def _process(self, image: np.ndarray, frame: int, t: float, dropped: int) -> FrameResult:
        events: list[TrackEvent] = []
        self.tracker.predict(t)
        detected = (
            self._since_detect >= self.config.detect_every
            or t - self._detected_at >= self.config.max_detect_gap
        )
        self._since_detect = 1 if detected else self._since_detect + 1
        if detected:
            self._detected_at = t
            found = self.batcher.detect(image)
            assoc = self.tracker.associate(found.boxes, found.scores, found.landmarks, t)
            self._embed_and_start(image, found, assoc.matched, assoc.unmatched, frame, t, events)
        newly_lost, ended = self.tracker.sweep(t)
        for track in newly_lost:
            if track.reported:
                events.append(self._event("track_lost", track, frame, t, self._label(track)))
        for track in ended:
            if track.reported:
                events.append(self._ended(track, frame, t))
            self._info.pop(track.id, None)
        self.processed += 1
        faces = [
            self._face(track, detected)
            for track in self.tracker.active()
            if track.misses == 0 and track.reported
        ]
        return FrameResult(frame, t, faces, dropped, events, detected)

    def _embed_and_start(
        self,
        image: np.ndarray,
        found: Detections,
        matched: Sequence[tuple[Track, int]],
        unmatched: Sequence[int],
        frame: int,
        t: float,
        events: list[TrackEvent],
    ) -> None:
        refresh = self._due(matched)
        wanted = list(unmatched) + [c for _, c in refresh]
        embeddings = np.zeros((len(wanted), 0), np.float32)
        if wanted:
            crops = self.pipeline.align(image, found.take(wanted))
            embeddings = self.batcher.embed(crops)
            self.embedded += len(wanted)
        new_emb = embeddings[: len(unmatched)]
        boxes = found.boxes[list(unmatched)] if unmatched else np.zeros((0, 4), np.float32)
        reattached = dict(self.tracker.continuations(new_emb, boxes))
        for k, c in enumerate(unmatched):
            box, score, marks = found.boxes[c], float(found.scores[c]), found.landmarks[c]
            track = reattached.get(k)
            if track is not None:
                was_lost = track.state == "lost"
                track.observe(box, score, marks, t)
                if was_lost and track.reported:
                    events.append(self._event("track_resumed", track, frame, t, self._label(track)))
            else:
                track = self.tracker.start(box, score, marks, t)
                self._info[track.id] = _TrackInfo(IdentityVote(self.config.vote))
            self._announce(track, frame, t, events)
            if new_emb.shape[1]:
                self._vote(track, new_emb[k], image.shape, frame, t, events)
        for (track, _), emb in zip(refresh, embeddings[len(unmatched) :], strict=True):
            self._vote(track, emb, image.shape, frame, t, events)
        for track, _ in matched:
            self._announce(track, frame, t, events)

    def _due(self, matched: Sequence[tuple[Track, int]]) -> list[tuple[Track, int]]:
        """Matched tracks to re-embed this frame: grown ones first, then the longest
        waiting among those due, within the budget."""
        due = []
        for track, c in matched:
            info = self._info[track.id]
            waited = self.processed - info.embedded_frame
            grown = track.area >= (1.0 + self.config.embed_growth) * info.embedded_area
            eager = (
                self.policy is not None
                and info.identity.subject is None
                and len(info.identity.votes) < self.config.eager_votes
            )
            every = self.config.embed_every_unknown if eager else self.config.embed_every
            if grown or waited >= every:
                due.append((not grown, -waited, track.id, (track, c)))
        due.sort(key=lambda d: d[:3])
        return [d[3] for d in due[: self.config.embed_budget]]

    def _vote(
        self,
        track: Track,
        embedding: np.ndarray,
        shape: tuple[int, ...],
        frame: int,
        t: float,
        events: list[TrackEvent],
    ) -> None:
        info = self._info[track.id]
        inside = inside_fraction(track.box, shape[1], shape[0])
        weight = vote_weight(track.score, track.area, self.config.vote, inside)
        track.observe_appearance(embedding, weight)
        info.embedded_frame = self.processed
        info.embedded_area = track.area
        if self.policy is None:
            return
        candidates = self.policy.search(embedding[None], self.config.top_k)[0]
        if info.identity.add(candidates, self.policy.point, weight) and track.reported:
            events.append(self._identified(track, frame, t))

    def _announce(self, track: Track, frame: int, t: float, events: list[TrackEvent]) -> None:
        """``track_started`` once the track has ``min_hits`` detections (and
        ``identified`` if it was named before that)."""
        if track.reported or track.hits < self.config.tracker.min_hits:
            return
        track.reported = True
        box = [round(float(v), 1) for v in track.box]
        events.append(
            self._event(
                "track_started", track, frame, t, {"box": box, "score": round(track.score, 4)}
            )
        )
        if self._info[track.id].identity.subject is not None:
            events.append(self._identified(track, frame, t))

    def _identified(self, track: Track, frame: int, t: float) -> TrackEvent:
        ident = self._info[track.id].identity
        return self._event(
            "identified",
            track,
            frame,
            t,
            {
                "subject": ident.subject,
                "similarity": round(ident.similarity or 0.0, 4),
                "votes": ident.support,
            },
        )

    def _ended(self, track: Track, frame: int, t: float) -> TrackEvent:
        data = self._label(track)
        data["duration"] = round(track.last_seen - track.first_seen, 3)
        data["detections"] = track.hits
        self._info.pop(track.id, None)
        return self._event("track_ended", track, frame, t, data)

    def _label(self, track: Track) -> dict[str, Any]:
        info = self._info.get(track.id)
        if info is None or info.identity.subject is None:
            return {"subject": None}
        sim = info.identity.similarity
        return {"subject": info.identity.subject, "similarity": round(sim or 0.0, 4)}

    @staticmethod
    def _event(
        name: str, track: Track, frame: int, t: float, data: dict[str, Any] | None = None
    ) -> TrackEvent:
        return TrackEvent(name, track.id, frame, t, data or {})

    def _face(self, track: Track, detected: bool) -> FaceResult:
        box = track.box if detected else track.predicted_box
        ident = self._info[track.id].identity
        named = ident.subject is not None
        return FaceResult(
            track.id,
            (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            float(track.score),
            ident.subject,
            ident.similarity if named else ident.last_similarity,
        )
