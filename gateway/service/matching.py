"""1:N in the gateway, through the core's policy (:mod:`facerec.matching`, :mod:`facerec.openset`).

- **Candidates** (:meth:`IndexMatcher.match`): the index's nearest faces of each probe give
  the subjects to consider; the best :func:`rerank_limit` of them (by their best face) are
  scored exactly with all their indexed templates, opened from the system of record, under
  the policy's scoring (``centroid`` by default: the cosine with the normalised mean of a
  subject's templates). ``perf/identify_scoring.py`` measured this against keeping a
  centroid per subject in the index (README, "1:N in the gateway").
- **A fused model** (``facenet128+dlib128``): the index holds only its first part's
  vectors (:class:`facerec.fusion.IndexSpace`, applied by the index to what it stores and
  to the probes), while the probes and templates scored here are the full fused
  embeddings, so this re-scoring is the fused re-rank of a two-stage search. Against
  exhaustive fusion on LFW (``perf/fusion_search.py``, G = 1,000 and a whole half) the
  first :func:`rerank_limit` (``top_k`` = 5: 10) subjects of :func:`hits_wanted` faces
  lose no accepted decision at FPIR 1e-3 (each was FaceNet's first subject), 1e-2 or 1e-1
  (at most the 8th).
- **Scope**: a caller searches only its namespace and gallery
  (:class:`~gateway.service.types.Caller`, the rule is :mod:`gateway.scope`'s): the index
  is filtered by them, the templates are opened only for subjects within them, and the
  operating point is the one for the size of that scope's gallery (:class:`GallerySizes`),
  so neither a candidate nor the gallery size of another tenant reaches the response.
- **Operating point** (:meth:`IndexMatcher.operating_point`): the policy's threshold for
  the gallery's size (:class:`GallerySize`) at a target FPIR (``FACEREC_IDENTIFY_FPIR``,
  or the request's), unless the request gives an explicit threshold.
- **Visibility** (:func:`visible`): a caller without the admin role sees only candidates at
  or above the threshold, and may not loosen the operating point below the service's
  (:class:`ThresholdNotAllowedError`): an identify key cannot list the gallery.
- **Decision** (:meth:`IndexMatcher.identify`): probe embeddings, the caller and the
  operating point in; per probe, the candidates ranked, decided at that point
  (:func:`facerec.matching.decide`), filtered to those the caller may see and named.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from facerec.matching import Candidate, Hit, IdentificationPolicy, decide, rank_candidates
from facerec.openset import OperatingPoint, check_fpir
from gateway.errors import ForbiddenError
from gateway.index.manager import IndexManager
from gateway.scope import EVERYWHERE, Area, Scope, within
from gateway.service.types import Caller
from gateway.service.types import Candidate as NamedCandidate
from gateway.storage.faces import FaceRepository

log = logging.getLogger(__name__)

FACES_PER_CANDIDATE = 16  # index hits asked for per candidate wanted ...
MIN_HITS = 64  # ... and at least this many
MAX_HITS = 1000
MIN_RERANK = 10  # subjects re-scored with their templates: at least this many ...
RERANK_PER_CANDIDATE = 2  # ... or this many per candidate wanted
TOLERANCE = 1e-9  # thresholds closer than this are the same
MAX_SCOPES = 4096  # gallery sizes cached per (namespace, gallery); the oldest go first


def scope_of(caller: Caller | None) -> Area:
    """The (namespace, gallery) ``caller`` searches: everywhere for the service itself."""
    return EVERYWHERE if caller is None else caller.area


def hits_wanted(top_k: int) -> int:
    """How many nearest faces to fetch from the index for ``top_k`` subjects."""
    return min(max(FACES_PER_CANDIDATE * top_k, MIN_HITS), MAX_HITS)


def rerank_limit(top_k: int) -> int:
    """How many of the hit subjects (the best by their best face) are re-scored."""
    return max(RERANK_PER_CANDIDATE * top_k, MIN_RERANK)


def privileged(caller: Caller | None) -> bool:
    """Whether ``caller`` may see every candidate and loosen the operating point: admin
    keys, and the service itself (no caller)."""
    return caller is None or caller.role == "admin"


def visible(
    candidates: Sequence[Candidate], point: OperatingPoint, caller: Caller | None
) -> list[Candidate]:
    """The candidates ``caller`` may see: all of them for an admin, else only those at
    or above the threshold."""
    if privileged(caller):
        return list(candidates)
    return [c for c in candidates if c.similarity >= point.threshold]


class ThresholdNotAllowedError(ForbiddenError):
    """A caller without the admin role asked for a looser operating point than the
    service's (a lower threshold, or a higher FPIR)."""

    code = "threshold_not_allowed"


class GallerySize:
    """The number of enrolled subjects with at least one indexed face, cached.

    Counted in SQL on first use; after a change in this process (:meth:`changed`, with the
    change in the count when known) and every ``max_age`` seconds (changes made by other
    processes) it is recounted in the background while readers keep the last value, so an
    identification never waits for the count after the first.
    """

    def __init__(self, count: Callable[[], int], max_age: float = 30.0) -> None:
        self._count, self.max_age = count, max_age
        self._lock = threading.Lock()
        self._value: int | None = None
        self._stamp = 0.0
        self._generation = 0  # changes seen; a recount that overlapped one does not settle
        self._dirty = False
        self._counting = False

    def get(self) -> int:
        with self._lock:
            value = self._value
            stale = self._dirty or time.monotonic() - self._stamp > self.max_age
            start = value is not None and stale and not self._counting
            if start:
                self._counting = True
        if value is None:
            return self._recount()
        if start:
            threading.Thread(target=self._recount, name="gallery-size", daemon=True).start()
        return value

    def changed(self, delta: int = 0) -> None:
        """The gallery changed here: adjust by ``delta`` subjects now, recount soon."""
        with self._lock:
            self._generation += 1
            self._dirty = True
            if self._value is not None:
                self._value = max(0, self._value + delta)

    def _recount(self) -> int:
        with self._lock:
            generation = self._generation
        try:
            value = self._count()
        except Exception:
            log.exception("counting the enrolled subjects failed")
            with self._lock:
                self._counting = False
                if self._value is not None:
                    return self._value
            raise
        with self._lock:
            self._counting = False
            if generation == self._generation or self._value is None:
                self._value, self._stamp, self._dirty = value, time.monotonic(), False
            return self._value if self._value is not None else value


class GallerySizes:
    """A :class:`GallerySize` per scope searched, made on first use (``count(namespace,
    gallery)`` counts one); at most :data:`MAX_SCOPES` are kept."""

    def __init__(
        self, count: Callable[[str | None, str | None], int], max_age: float = 30.0
    ) -> None:
        self._count, self.max_age = count, max_age
        self._lock = threading.Lock()
        self._sizes: dict[Area, GallerySize] = {}

    def _size(self, scope: Area) -> GallerySize:
        with self._lock:
            size = self._sizes.get(scope)
            if size is None:
                if len(self._sizes) >= MAX_SCOPES:
                    del self._sizes[next(iter(self._sizes))]
                size = GallerySize(lambda: self._count(*scope), self.max_age)
                self._sizes[scope] = size
            return size

    def get(self, scope: Area = EVERYWHERE) -> int:
        """The number of enrolled subjects in ``scope``."""
        return self._size(scope).get()

    def changed(self, delta: int = 0, where: Scope | None = None) -> None:
        """The gallery changed here: by ``delta`` subjects in the subject scope ``where``
        (every cached size that holds it); None: somewhere, every size is recounted."""
        with self._lock:
            sizes = list(self._sizes.items())
        for scope, size in sizes:
            if where is None:
                size.changed()
            elif within(scope, where):
                size.changed(delta)


@dataclass(frozen=True)
class Decided:
    """The open-set decision on one probe, as the caller may see it."""

    candidates: list[NamedCandidate]  # those the caller may see (:func:`visible`), best first
    match: NamedCandidate | None  # None: no one is close enough
    best: float | None  # the best candidate's score, seen or not (for the audit)


class IndexMatcher:
    """Candidates from the index ranked by the policy, the operating point to decide at,
    and the decision for a caller."""

    def __init__(
        self,
        policy: IdentificationPolicy,
        index: IndexManager,
        faces: FaceRepository,
        fpir: float,
        sizes: GallerySizes | None = None,
    ) -> None:
        self.policy, self.index, self.faces = policy, index, faces
        self.fpir = check_fpir(fpir)
        model_id = index.model_id  # only the running model's templates are compared
        self.sizes = sizes or GallerySizes(
            lambda namespace, gallery: faces.enrolled_count(namespace, gallery, model_id)
        )
        policy.operating_point(1, self.fpir)  # an FPIR outside the card's range fails here

    def match(
        self, probes: np.ndarray, top_k: int, scope: Area = EVERYWHERE
    ) -> tuple[list[list[Candidate]], dict[str, str]]:
        """For each probe float32[N, D], up to ``top_k`` subjects of ``scope`` (namespace,
        gallery) ranked by the policy's scoring, best first; and the names of the subjects
        among them."""
        if len(probes) == 0:
            return [], {}
        namespace, gallery = scope
        hits = self.index.search(
            probes, top_k=hits_wanted(top_k), namespace=namespace, gallery=gallery
        )
        limit = rerank_limit(top_k)
        kept: list[list[Hit]] = []
        for face_hits in hits:  # best first: keep the hits of the first ``limit`` subjects
            subjects: set[str] = set()
            mine = []
            for h in face_hits:
                if h.subject_id not in subjects:
                    if len(subjects) == limit:
                        continue
                    subjects.add(h.subject_id)
                mine.append(h)
            kept.append(mine)
        found = self.faces.candidate_templates(
            sorted({h.subject_id for mine in kept for h in mine}),
            namespace,
            gallery,
            self.index.model_id,
        )
        templates = {sid: vectors for sid, (_, vectors) in found.items()}
        scoring = self.policy.scoring
        ranked = [
            rank_candidates(probe, mine, scoring, templates, top=top_k)
            for probe, mine in zip(probes, kept, strict=True)
        ]
        return ranked, {sid: name for sid, (name, _) in found.items()}

    def operating_point(
        self,
        fpir: float | None = None,
        threshold: float | None = None,
        caller: Caller | None = None,
    ) -> OperatingPoint:
        """The threshold for the current size of the gallery ``caller`` searches (its
        namespace and gallery): ``threshold`` if given, else the policy's for ``fpir``
        (default: the service's). A caller without the admin role may only make it
        stricter than the service's (:class:`ThresholdNotAllowedError`)."""
        size = self.sizes.get(scope_of(caller))
        point = self.policy.operating_point(size, self.fpir if fpir is None else fpir, threshold)
        if not privileged(caller):
            floor = self.policy.operating_point(size, self.fpir)
            if point.threshold < floor.threshold - TOLERANCE:
                raise ThresholdNotAllowedError(
                    f"this key may not lower the identification threshold below the "
                    f"service's ({floor.threshold:.4f} at FPIR {self.fpir:g} for "
                    f"{size} subjects); an admin key may",
                    threshold=round(point.threshold, 6),
                    minimum=round(floor.threshold, 6),
                )
        return point

    def identify(
        self, probes: np.ndarray, top_k: int, point: OperatingPoint, caller: Caller | None
    ) -> list[Decided]:
        """For each probe float32[N, D]: up to ``top_k`` candidates of the gallery ``caller``
        searches (:meth:`match`), decided at ``point``, those ``caller`` may see named."""
        ranked, names = self.match(probes, top_k, scope_of(caller))
        out = []
        for candidates in ranked:
            decision = decide(candidates, point)
            shown = [
                NamedCandidate(c.subject_id, names[c.subject_id], round(c.similarity, 6))
                for c in visible(decision.candidates, point, caller)
            ]
            match = None
            if decision.match is not None:
                match = next(c for c in shown if c.subject_id == decision.match.subject_id)
            best = decision.candidates[0].similarity if decision.candidates else None
            out.append(Decided(shown, match, best))
        return out
