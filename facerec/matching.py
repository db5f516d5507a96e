"""Subject scoring and the open-set decision (1:N identification).

A subject may have several templates (embeddings of several photos). Its score against a
probe is one of (:data:`SCORE_METHODS`):

- ``max``: the best cosine over its templates;
- ``topk``: the mean of its ``k`` best (all of them when it has fewer);
- ``centroid``: the cosine with the normalised mean of its templates.

``facerec bench lfw-openset`` measures which identifies best at a fixed FPIR;
:data:`DEFAULT_SCORING` is that one. The decision compares the best candidate with an
:class:`~facerec.openset.OperatingPoint` (threshold for a target FPIR and the gallery's
size, or an explicit threshold). Everything here is numpy on float32 unit vectors; the
same functions serve the CLI (an in-memory :class:`Gallery`), the gateway (hits from a
vector index, :func:`candidates_from_hits`, or exact re-scoring of candidate subjects,
:func:`rerank`) and video (a track's accumulated candidates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from facerec.errors import InvalidArgumentError
from facerec.models import ModelCard
from facerec.openset import OperatingPoint, ThresholdTable, operating_point

ScoreMethod = Literal["max", "topk", "centroid"]
SCORE_METHODS: tuple[ScoreMethod, ...] = get_args(ScoreMethod)


@dataclass(frozen=True)
class Scoring:
    """How a subject's templates become one score: ``method`` and, for ``topk``, ``k``."""

    method: ScoreMethod = "centroid"
    k: int = 2

    def __post_init__(self) -> None:
        if self.method not in SCORE_METHODS:
            raise InvalidArgumentError(
                f"score method must be one of {', '.join(SCORE_METHODS)}, not {self.method!r}"
            )
        if self.k < 1:
            raise InvalidArgumentError("k must be at least 1")

    @classmethod
    def parse(cls, method: str, k: int = 2) -> Scoring:
        """A :class:`Scoring` from user input (raises :class:`InvalidArgumentError`)."""
        if method not in SCORE_METHODS:
            raise InvalidArgumentError(
                f"score method must be one of {', '.join(SCORE_METHODS)}, not {method!r}"
            )
        return cls(method, k)


DEFAULT_SCORING = Scoring("centroid")


@dataclass(frozen=True)
class Hit:
    """One face returned by a vector index: its id, its subject, its cosine to the probe."""

    face_id: str
    subject_id: str
    similarity: float


@dataclass(frozen=True)
class Candidate:
    """A subject and its similarity to one probe: the cosine score of its templates under
    the :class:`Scoring` in use."""

    subject_id: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject_id, "similarity": round(self.similarity, 6)}


def centroid(templates: np.ndarray) -> np.ndarray:
    """The normalised mean of ``templates`` float32[K, D] (unit rows): float32[D], unit."""
    if templates.ndim != 2 or len(templates) == 0:
        raise InvalidArgumentError(
            f"templates must be float32[K, D], K >= 1, not {templates.shape}"
        )
    return np.asarray(centroids(templates[None], np.array([len(templates)]))[0])


def centroids(padded: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`centroid` of every subject at once: ``padded`` float32[S, K, D] holds subject
    s's templates in its first ``counts[s]`` rows and zeros after them. float32[S, D]."""
    if (counts < 1).any():
        raise InvalidArgumentError("a subject without templates has no centroid")
    mean = padded.astype(np.float64).sum(axis=1) / counts[:, None]
    norms = np.sqrt(np.einsum("sd,sd->s", mean, mean))
    if (norms < 1e-12).any():
        raise InvalidArgumentError("templates cancel out: no centroid")
    return np.asarray(mean / norms[:, None], np.float32)


def reduce_templates(similarities: np.ndarray, counts: np.ndarray, scoring: Scoring) -> np.ndarray:
    """Subject scores from per-template similarities, ``max`` or ``topk``.

    ``similarities`` float[N, S, K]: probe n's cosine with template k of subject s, the
    unused slots (k >= ``counts[s]``) set to -inf; ``counts`` int[S] >= 1. Returns
    float32[N, S].
    """
    if scoring.method == "max":
        return np.asarray(similarities.max(axis=2), np.float32)
    if scoring.method != "topk":
        raise InvalidArgumentError("centroid scores need the templates, not similarities")
    k = min(scoring.k, similarities.shape[2])
    top = -np.sort(-similarities, axis=2)[:, :, :k]
    used = np.minimum(counts, k)  # int[S]
    top = np.where(np.arange(k)[None, None, :] < used[None, :, None], top, 0.0)
    return np.asarray(top.sum(axis=2) / used[None, :], np.float32)


class Gallery:
    """Exact in-memory 1:N search over subjects with one or more templates each."""

    def __init__(self, embedding_size: int, scoring: Scoring = DEFAULT_SCORING) -> None:
        self.embedding_size = embedding_size
        self.scoring = scoring
        self._templates: dict[str, list[np.ndarray]] = {}  # blocks float32[K, D] each
        self._packed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._templates)

    @property
    def subjects(self) -> list[str]:
        """Subject ids in enrolment order."""
        return list(self._templates)

    def templates(self, subject_id: str) -> np.ndarray:
        """float32[K, D]: the templates of ``subject_id`` (KeyError if unknown)."""
        return np.concatenate(self._templates[subject_id])

    def add(self, subject_id: str, embeddings: np.ndarray) -> None:
        """Enrol ``embeddings`` float32[K, D] (unit rows) under ``subject_id``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise InvalidArgumentError(
                f"embeddings must be float32[K, {self.embedding_size}], got {embeddings.shape}"
            )
        self._templates.setdefault(subject_id, []).append(embeddings.astype(np.float32))
        self._packed = None

    def _pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors float32[S, K, D] zero-padded, counts int[S], centroids float32[S, D])."""
        if self._packed is None:
            blocks = [b[0] if len(b) == 1 else np.concatenate(b) for b in self._templates.values()]
            counts = np.array([len(b) for b in blocks])
            vectors = np.zeros((len(blocks), int(counts.max()), self.embedding_size), np.float32)
            for s, block in enumerate(blocks):
                vectors[s, : len(block)] = block
            self._packed = (vectors, counts, centroids(vectors, counts))
        return self._packed

    def scores(self, probes: np.ndarray) -> np.ndarray:
        """float32[N, S]: every probe float32[N, D] against every subject (in
        :attr:`subjects` order) under :attr:`scoring`."""
        if len(self) == 0:
            return np.zeros((len(probes), 0), np.float32)
        vectors, counts, cents = self._pack()
        p = probes.astype(np.float32)
        if self.scoring.method == "centroid":
            return np.asarray(p @ cents.T, np.float32)
        sims = np.einsum("nd,skd->nsk", p, vectors)
        sims[:, np.arange(vectors.shape[1])[None, :] >= counts[:, None]] = -np.inf
        return reduce_templates(sims, counts, self.scoring)

    def search(self, probes: np.ndarray, top: int = 5) -> list[list[Candidate]]:
        """For each probe float32[N, D], the ``top`` subjects by score, best first."""
        if len(self) == 0 or len(probes) == 0:
            return [[] for _ in range(len(probes))]
        scores = self.scores(probes)
        k = min(top, len(self))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        names = self.subjects
        return [
            [Candidate(names[j], float(scores[i, j])) for j in order[i]] for i in range(len(probes))
        ]


def rerank(
    probes: np.ndarray,
    templates: Mapping[str, np.ndarray],
    scoring: Scoring = DEFAULT_SCORING,
    top: int = 5,
) -> list[list[Candidate]]:
    """Exact scores of the subjects in ``templates`` (id -> float32[K, D]) for each probe
    float32[N, D], best first: e.g. the subjects a vector index returned, re-scored with
    all their templates."""
    if not templates:
        return [[] for _ in range(len(probes))]
    first = next(iter(templates.values()))
    gallery = Gallery(first.shape[1], scoring)
    for subject_id, vectors in templates.items():
        gallery.add(subject_id, vectors)
    return gallery.search(probes, top)


def candidates_from_hits(
    hits: Iterable[Hit], scoring: Scoring = Scoring("max"), top: int | None = None
) -> list[Candidate]:
    """Subjects ranked from one probe's face hits (a vector index's top faces), best first.

    ``max``: a subject's best hit; ``topk``: the mean of its best ``k`` hits (of those
    returned: a subject with fewer hits than ``k`` is averaged over the hits it has).
    ``centroid`` cannot be computed from face hits: search a per-subject centroid index
    and rank its hits with ``max``, or :func:`rerank` the hit subjects' templates.
    """
    if scoring.method == "centroid":
        raise InvalidArgumentError(
            "centroid scores come from the subjects' centroids: rank hits of a centroid "
            "index with Scoring('max'), or rerank() the candidates' templates"
        )
    per_subject: dict[str, list[float]] = defaultdict(list)
    for h in hits:
        per_subject[h.subject_id].append(float(h.similarity))
    ranked = []
    for subject_id, sims in per_subject.items():
        best = sorted(sims, reverse=True)
        score = best[0] if scoring.method == "max" else float(np.mean(best[: scoring.k]))
        ranked.append(Candidate(subject_id, score))
    ranked.sort(key=lambda c: (-c.similarity, c.subject_id))
    return ranked if top is None else ranked[:top]


def rank_candidates(
    probe: np.ndarray,
    hits: Iterable[Hit],
    scoring: Scoring = DEFAULT_SCORING,
    templates: Mapping[str, np.ndarray] | None = None,
    top: int = 5,
) -> list[Candidate]:
    """The subjects of one probe float32[D] from a vector index's face ``hits``, best first.

    With ``templates`` (subject id -> float32[K, D], for the subjects among the hits) the
    hit subjects are re-scored exactly with all their templates (:func:`rerank`: any
    method, ``centroid`` included); without, ``max``/``topk`` come from the hits alone
    (:func:`candidates_from_hits`). Hits of subjects missing from ``templates`` (deleted
    meanwhile) are dropped.
    """
    hits = list(hits)
    if templates is None:
        return candidates_from_hits(hits, scoring, top)
    wanted = {h.subject_id for h in hits}
    chosen = {s: t for s, t in templates.items() if s in wanted and len(t)}
    return rerank(probe[None], chosen, scoring, top)[0]


@dataclass(frozen=True)
class Decision:
    """The open-set answer for one probe: ``match`` (the best candidate if its score
    reaches the threshold, else None), the ``candidates`` considered, and the
    :class:`~facerec.openset.OperatingPoint` used."""

    match: Candidate | None
    candidates: tuple[Candidate, ...]
    point: OperatingPoint

    def to_dict(self) -> dict[str, Any]:
        """``{"match", "candidates", "threshold", "fpir", "gallery_size", "method",
        "threshold_source"}``."""
        return {
            "match": None if self.match is None else self.match.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            **self.point.to_dict(),
        }


def verified(similarity: float, threshold: float) -> bool:
    """The 1:1 decision: two faces are the same person when their cosine reaches the
    threshold (the 1:N decision below holds its best candidate to the same rule)."""
    return similarity >= threshold


def decide(candidates: Sequence[Candidate], point: OperatingPoint) -> Decision:
    """The best of ``candidates`` (highest score, whatever their order) if it reaches
    ``point.threshold``, else no match."""
    ranked = tuple(sorted(candidates, key=lambda c: -c.similarity))
    match = ranked[0] if ranked and verified(ranked[0].similarity, point.threshold) else None
    return Decision(match, ranked, point)


class IdentificationPolicy:
    """A scoring method and its measured thresholds: everything an identification needs
    besides the search itself.

    ``policy.operating_point(gallery_size, fpir=..., threshold=...)`` then
    ``policy.decide(candidates, point)``; or ``policy.identify(gallery, probes)`` for an
    in-memory :class:`Gallery`.
    """

    def __init__(self, scoring: Scoring, table: ThresholdTable) -> None:
        if table.method != scoring.method:
            raise InvalidArgumentError(
                f"thresholds measured for {table.method!r} cannot serve {scoring.method!r}"
            )
        self.scoring = scoring
        self.table = table

    @classmethod
    def from_card(
        cls,
        card: ModelCard,
        alignment: str,
        flip: bool,
        precision: str,
        scoring: Scoring = DEFAULT_SCORING,
    ) -> IdentificationPolicy:
        """The thresholds the model card holds for this pipeline variant and method."""
        return cls(scoring, card.identification_table(alignment, flip, precision, scoring.method))

    def operating_point(
        self, gallery_size: int, fpir: float | None = None, threshold: float | None = None
    ) -> OperatingPoint:
        """See :func:`facerec.openset.operating_point` (``fpir`` None: the
        ``FACEREC_IDENTIFY_FPIR`` setting, default 1e-3)."""
        return operating_point(self.table, gallery_size, fpir, threshold)

    def decide(self, candidates: Sequence[Candidate], point: OperatingPoint) -> Decision:
        return decide(candidates, point)

    def identify(
        self,
        gallery: Gallery,
        probes: np.ndarray,
        top: int = 5,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> list[Decision]:
        """One :class:`Decision` per probe float32[N, D] against ``gallery``."""
        if gallery.scoring != self.scoring:
            raise InvalidArgumentError("the gallery scores with another method than the policy")
        point = self.operating_point(len(gallery), fpir, threshold)
        return [decide(c, point) for c in gallery.search(probes, top)]
