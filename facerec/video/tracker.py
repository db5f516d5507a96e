"""Face tracking: IoU association with a constant-velocity Kalman filter, and re-attachment
of lost tracks by appearance (embedding cosine) within a time window.

Why not a package: norfair pins numpy < 2, ``trackers`` needs the full ``opencv-python``
(which conflicts with the headless build pinned here), boxmot is AGPL and pulls in torch,
motpy is unmaintained and supervision no longer ships ByteTrack. Faces in a frame are few,
so a greedy match by descending IoU does what an assignment solver would.

Times are seconds of the stream (frame timestamps), so a dropped frame or a detector run
every N frames just means a longer prediction step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

TrackState = Literal["active", "lost", "ended"]


@dataclass(frozen=True)
class TrackerConfig:
    """``iou_threshold``: least IoU between a track's predicted box and a detection to
    associate them. ``coast``: seconds a track may go undetected (occlusion, a missed
    detection) before it is lost. ``reattach_window``: seconds a lost track waits to be
    re-attached before it ends. ``reattach_similarity``: least cosine between a new face's
    embedding and a lost track's appearance to re-attach it anywhere; ``nearby_similarity``:
    the least when the face is within ``nearby_distance`` box heights of where the track
    is predicted to be. ``min_hits``: detections a
    new track needs before it is reported (1: at once)."""

    iou_threshold: float = 0.3
    coast: float = 0.5
    reattach_window: float = 3.0
    reattach_similarity: float = 0.6
    nearby_similarity: float = 0.1
    nearby_distance: float = 0.75
    min_hits: int = 1
    measurement_noise: float = 0.06  # box measurement std, as a fraction of box height
    acceleration_noise: float = 3.0  # centre acceleration std, box heights per s²
    size_noise: float = 0.5  # box size random walk std, as a fraction per s


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes float[N, 4] and float[M, 4] (x1, y1, x2, y2)
    -> float64[N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.asarray(np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0))


def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between the centres of boxes float[N, 4] and float[M, 4], in heights of
    the ``b`` boxes -> float64[N, M]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    d = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=2)
    return np.asarray(d / np.maximum(b[None, :, 3] - b[None, :, 1], 1.0))


def greedy_pairs(score: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """Row-column pairs taken by descending ``score`` (float[N, M]), each row and column
    at most once, only where ``score >= minimum``."""
    pairs: list[tuple[int, int]] = []
    if score.size == 0:
        return pairs
    order = np.argsort(-score, axis=None, kind="stable")
    rows_used: set[int] = set()
    cols_used: set[int] = set()
    for flat in order:
        r, c = divmod(int(flat), score.shape[1])
        if score[r, c] < minimum:
            break
        if r in rows_used or c in cols_used:
            continue
        pairs.append((r, c))
        rows_used.add(r)
        cols_used.add(c)
    return pairs


class BoxFilter:
    """Kalman filter of one box: state float64[6] = centre x, centre y, width, height (px),
    centre velocity x, y (px/s); constant velocity for the centre, random walk for the
    size. Noise scales with the box height, so near and far faces behave alike."""

    def __init__(self, box: np.ndarray, t: float, config: TrackerConfig) -> None:
        self.config = config
        self.t = t
        self.x = np.zeros(6)
        self.x[:4] = _to_cxcywh(box)
        h = max(self.x[3], 1.0)
        r = config.measurement_noise * h
        self.P = np.diag([r * r, r * r, r * r, r * r, (2 * h) ** 2, (2 * h) ** 2])

    @property
    def box(self) -> np.ndarray:
        """float32[4] x1, y1, x2, y2 of the current estimate."""
        cx, cy, w, h = self.x[:4]
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    def predict(self, t: float) -> None:
        dt = t - self.t
        if dt <= 0:
            return
        self.t = t
        F = np.eye(6)
        F[0, 4] = F[1, 5] = dt
        h = max(self.x[3], 1.0)
        qa = (self.config.acceleration_noise * h) ** 2
        qs = (self.config.size_noise * h) ** 2 * dt
        Q = np.zeros((6, 6))
        for p, v in ((0, 4), (1, 5)):
            Q[p, p] = qa * dt**4 / 4
            Q[p, v] = Q[v, p] = qa * dt**3 / 2
            Q[v, v] = qa * dt**2
        Q[2, 2] = Q[3, 3] = qs
        self.x = F @ self.x
        self.P = F @ self.P @ F.T + Q

    def update(self, box: np.ndarray) -> None:
        z = _to_cxcywh(box)
        H = np.zeros((4, 6))
        H[:, :4] = np.eye(4)
        r = (self.config.measurement_noise * max(z[3], 1.0)) ** 2
        S = H @ self.P @ H.T + np.eye(4) * r
        K = self.P @ H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = (np.eye(6) - K @ H) @ self.P


def _to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


@dataclass
class Track:
    """One tracked face. ``box`` is the last detected box (float32[4]); ``misses`` counts
    detection rounds since it was last matched (0: seen by the latest detection)."""

    id: int
    filter: BoxFilter
    box: np.ndarray
    score: float
    landmarks: np.ndarray  # float32[5, 2] of the last detection
    first_seen: float
    last_seen: float
    state: TrackState = "active"
    hits: int = 1
    misses: int = 0
    appearance: np.ndarray | None = None  # float32[D] unit: weighted mean of its embeddings
    appearance_weight: float = 0.0
    reported: bool = False  # whether it has been announced (track_started)

    @property
    def predicted_box(self) -> np.ndarray:
        return self.filter.box

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    def observe(self, box: np.ndarray, score: float, landmarks: np.ndarray, t: float) -> None:
        self.filter.update(box)
        self.box = np.asarray(box, np.float32)
        self.score = score
        self.landmarks = landmarks
        self.last_seen = t
        self.hits += 1
        self.misses = 0
        self.state = "active"

    def observe_appearance(self, embedding: np.ndarray, weight: float) -> None:
        """Fold a unit embedding float32[D] into the track's appearance (weighted mean)."""
        w = max(weight, 1e-6)
        mean = np.asarray(embedding, np.float64) * w
        if self.appearance is not None:
            mean += self.appearance * self.appearance_weight
        self.appearance_weight = min(self.appearance_weight + w, 20.0)  # recent views count
        self.appearance = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


@dataclass
class Association:
    """The result of one detection round: tracks matched to detection indices, and the
    indices of detections no active track claimed."""

    matched: list[tuple[Track, int]]
    unmatched: list[int]


class Tracker:
    """The tracks of one stream. Ids start at 1 and are never reused."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def active(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.state == "active"]

    def lost(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.state == "lost"]

    def predict(self, t: float) -> None:
        """Advance every track's filter to time ``t`` (seconds)."""
        for track in self.tracks.values():
            track.filter.predict(t)

    def associate(
        self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, t: float
    ) -> Association:
        """Match detections (boxes float32[K, 4], scores float32[K], landmarks
        float32[K, 5, 2]) to the active tracks' predicted boxes by IoU; matched tracks take
        the detection, the others count a miss. Tracks seen in the previous round choose
        first, so a coasting track's drifting prediction cannot take a face that another
        track has been following."""
        matched: list[tuple[Track, int]] = []
        claimed: set[int] = set()
        active = self.active()
        for fresh in (True, False):
            group = [tr for tr in active if (tr.misses == 0) == fresh]
            free = [c for c in range(len(boxes)) if c not in claimed]
            if not group or not free:
                continue
            predicted = np.array([tr.predicted_box for tr in group]).reshape(-1, 4)
            iou = iou_matrix(predicted, boxes[free])
            for r, j in greedy_pairs(iou, self.config.iou_threshold):
                c = free[j]
                matched.append((group[r], c))
                claimed.add(c)
        hit = {id(tr) for tr, _ in matched}
        for track in active:
            if id(track) not in hit:
                track.misses += 1
        for track, c in matched:
            track.observe(boxes[c], float(scores[c]), landmarks[c], t)
        return Association(matched, [c for c in range(len(boxes)) if c not in claimed])

    def start(self, box: np.ndarray, score: float, landmarks: np.ndarray, t: float) -> Track:
        """A new track for an unclaimed detection."""
        track = Track(
            self._next_id,
            BoxFilter(box, t, self.config),
            np.asarray(box, np.float32),
            score,
            landmarks,
            t,
            t,
        )
        self._next_id += 1
        self.tracks[track.id] = track
        return track

    def continuations(self, embeddings: np.ndarray, boxes: np.ndarray) -> list[tuple[int, Track]]:
        """Which unclaimed detections continue a track that the latest detection round
        missed (coasting or lost): embeddings float32[K, D] (or float[K, 0] when none were
        computed), boxes float32[K, 4].

        A pair qualifies when the detection's embedding is within ``reattach_similarity``
        of the track's appearance, or within the looser ``nearby_similarity`` while its
        box is within ``nearby_distance`` box heights of the track's predicted box (a face
        coming out from behind something, seen in part at first); without embeddings, by
        IoU with the predicted box. Greedy, most similar first; one detection per track.
        """
        waiting = [tr for tr in self.tracks.values() if tr.misses > 0 and tr.state != "ended"]
        if not waiting or len(boxes) == 0:
            return []
        cfg = self.config
        if not embeddings.shape[1]:
            predicted = np.array([tr.predicted_box for tr in waiting])
            pairs = greedy_pairs(iou_matrix(boxes, predicted), cfg.iou_threshold)
            return [(k, waiting[j]) for k, j in pairs]
        waiting = [tr for tr in waiting if tr.appearance is not None]
        if not waiting:
            return []
        seen = np.stack([tr.appearance for tr in waiting if tr.appearance is not None])
        similarity = embeddings @ seen.T
        predicted = np.array([tr.predicted_box for tr in waiting])
        near = centre_distance(boxes, predicted) <= cfg.nearby_distance
        allowed = (similarity >= cfg.reattach_similarity) | (
            near & (similarity >= cfg.nearby_similarity)
        )
        pairs = greedy_pairs(np.where(allowed, similarity, -np.inf), -1.0)
        return [(k, waiting[j]) for k, j in pairs]

    def sweep(self, t: float) -> tuple[list[Track], list[Track]]:
        """Tracks that become lost at ``t`` (undetected for longer than ``coast``), and
        lost tracks that end (lost for longer than ``reattach_window``; removed)."""
        newly_lost, ended = [], []
        for track in list(self.tracks.values()):
            unseen = t - track.last_seen
            if track.state == "active" and track.misses and unseen > self.config.coast:
                track.state = "lost"
                newly_lost.append(track)
            if track.state == "lost" and unseen > self.config.coast + self.config.reattach_window:
                track.state = "ended"
                ended.append(track)
                del self.tracks[track.id]
        return newly_lost, ended

    def end_all(self) -> list[Track]:
        """End every track (the stream is over)."""
        ended = list(self.tracks.values())
        for track in ended:
            track.state = "ended"
        self.tracks.clear()
        return ended
