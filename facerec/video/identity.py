"""Identity per track: a quality- and area-weighted vote over the track's embeddings.

Each embedding of a track is one vote: for the subject the open-set matching policy names
(its top candidate, when that clears the policy's threshold), or for "unknown". A vote
weighs the detector's score times the face's area (relative to ``reference_area``, capped
at 1) times the part of its box inside the frame, so an unsure, distant or cut-off view
counts less than a clear, near one. The
track is named once one subject holds ``min_share`` of the weight of its latest
``name_window`` votes with at least ``min_votes`` of them; until then it is ``unknown``.
The window makes a face that entered cut off by the frame's edge (its first views match
no one) named from its first clear views, instead of waiting until they outweigh the
early ones. A named track keeps its name unless another subject comes to hold
``switch_share`` of all its kept votes: the label does not flicker.

Each vote is decided by the project's one open-set rule (:func:`facerec.matching.decide`)
at the operating point of the :class:`MatchPolicy`: a threshold for a target FPIR and
the gallery's size, from the model card, or an explicit one. :class:`GalleryPolicy`
adapts an in-memory :class:`~facerec.matching.Gallery`; the gateway adapts its index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facerec.matching import Candidate, Gallery, decide
from facerec.openset import OperatingPoint


class MatchPolicy(Protocol):
    """Open-set 1:N matching: ranked candidates for probes, and the operating point (the
    threshold the top candidate must reach, and where it came from)."""

    @property
    def point(self) -> OperatingPoint: ...

    def search(self, probes: np.ndarray, top_k: int = 5) -> list[list[Candidate]]:
        """For each probe (float32[N, D], unit rows), up to ``top_k`` subjects, best
        first, with their similarity."""
        ...


@dataclass(frozen=True)
class GalleryPolicy:
    """:class:`MatchPolicy` over an in-memory gallery at one operating point."""

    gallery: Gallery
    point: OperatingPoint

    def search(self, probes: np.ndarray, top_k: int = 5) -> list[list[Candidate]]:
        return self.gallery.search(probes, top_k)


@dataclass(frozen=True)
class VoteConfig:
    min_votes: int = 2
    min_share: float = 0.6
    name_window: int = 3  # the latest votes a track without a name is named from
    switch_share: float = 0.75
    max_votes: int = 32  # the most recent votes kept per track (bounded memory)
    reference_area: float = 80.0 * 80.0  # px²: faces this large get the full area weight


@dataclass(frozen=True)
class Vote:
    subject: str | None  # None: no candidate cleared the threshold
    similarity: float  # of the top candidate
    weight: float


def vote_weight(score: float, area: float, config: VoteConfig, inside: float = 1.0) -> float:
    """Detector score times the face's relative area (capped at 1) times the fraction of
    its box inside the frame (a face cut by the frame's edge is only partly seen)."""
    return float(score) * min(1.0, max(area, 0.0) / config.reference_area) * inside


def inside_fraction(box: np.ndarray, width: int, height: int) -> float:
    """The fraction of ``box`` (x1, y1, x2, y2) that lies inside a width x height frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    ix = max(0.0, min(x2, width) - max(x1, 0.0))
    iy = max(0.0, min(y2, height) - max(y1, 0.0))
    return ix * iy / area


class IdentityVote:
    """The running identity of one track."""

    def __init__(self, config: VoteConfig | None = None) -> None:
        self.config = config or VoteConfig()
        self.votes: deque[Vote] = deque(maxlen=self.config.max_votes)
        self.subject: str | None = None  # the current name; None: unknown
        self.similarity: float | None = None  # the name's weighted mean similarity
        self.support = 0  # votes for the current name

    @property
    def last_similarity(self) -> float | None:
        """The top candidate's similarity in the latest vote."""
        return self.votes[-1].similarity if self.votes else None

    def add(self, candidates: Sequence[Candidate], point: OperatingPoint, weight: float) -> bool:
        """Count one embedding's candidates, decided at ``point``; True when the name
        changed."""
        decision = decide(candidates, point)
        subject = decision.match.subject_id if decision.match is not None else None
        similarity = decision.candidates[0].similarity if decision.candidates else 0.0
        self.votes.append(Vote(subject, similarity, weight))
        return self._decide()

    def _decide(self) -> bool:
        if self.subject is None:  # naming: from the latest votes
            window = list(self.votes)[-max(self.config.name_window, self.config.min_votes) :]
            leader, share, count = _leader(window)
            if leader is None or share < self.config.min_share or count < self.config.min_votes:
                return False
            self.subject = leader
            self._refresh(leader, sum(v.subject == leader for v in self.votes))
            return True
        leader, share, count = _leader(self.votes)  # renaming: from every kept vote
        support = sum(v.subject == self.subject for v in self.votes)
        if leader is None or leader == self.subject:
            self._refresh(self.subject, support)
            return False
        if share < self.config.switch_share or count < self.config.min_votes:
            self._refresh(self.subject, support)
            return False
        self.subject = leader
        self._refresh(leader, count)
        return True

    def _refresh(self, subject: str, support: int) -> None:
        mine = [v for v in self.votes if v.subject == subject]
        w = sum(v.weight for v in mine)
        if mine and w > 0:
            self.similarity = sum(v.similarity * v.weight for v in mine) / w
        self.support = support


def _leader(votes: Iterable[Vote]) -> tuple[str | None, float, int]:
    """The subject with the most weight among ``votes``, its share of all their weight
    (unknown votes included) and its number of votes; (None, 0, 0) when none names one."""
    total = 0.0
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    for v in votes:
        total += v.weight
        if v.subject is not None:
            weight[v.subject] = weight.get(v.subject, 0.0) + v.weight
            count[v.subject] = count.get(v.subject, 0) + 1
    if not weight or total <= 0:
        return None, 0.0, 0
    leader = max(weight, key=lambda s: weight[s])
    return leader, weight[leader] / total, count[leader]
