"""Matching embeddings: 1:1 verification and 1:N identification by cosine similarity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facerec.errors import InvalidArgumentError


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of float[N, D] and float[N, D] (or float[D] pairs) -> float[N]."""
    a2, b2 = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    num = (a2 * b2).sum(axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


@dataclass(frozen=True)
class Candidate:
    subject: str
    similarity: float


class Gallery:
    """Exact in-memory 1:N search over enrolled subjects, several templates each.

    A subject's similarity to a probe is the best over its templates.
    """

    def __init__(self, embedding_size: int) -> None:
        self.embedding_size = embedding_size
        self._vectors = np.zeros((0, embedding_size), np.float32)
        self._owner: list[int] = []
        self.subjects: list[str] = []

    def __len__(self) -> int:
        return len(self.subjects)

    def add(self, subject: str, embeddings: np.ndarray) -> None:
        """Enrol ``embeddings`` float32[K, D] (unit rows) under ``subject``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise InvalidArgumentError(
                f"embeddings must be float32[K, {self.embedding_size}], got {embeddings.shape}"
            )
        if subject in self.subjects:
            index = self.subjects.index(subject)
        else:
            index = len(self.subjects)
            self.subjects.append(subject)
        self._vectors = np.concatenate([self._vectors, embeddings.astype(np.float32)])
        self._owner.extend([index] * len(embeddings))

    def search(self, probes: np.ndarray, top_k: int = 5) -> list[list[Candidate]]:
        """For each probe float32[N, D], the ``top_k`` subjects by best cosine, best first."""
        if len(self.subjects) == 0 or len(probes) == 0:
            return [[] for _ in range(len(probes))]
        sims = probes.astype(np.float32) @ self._vectors.T  # both unit length
        owner = np.asarray(self._owner)
        best = np.full((len(probes), len(self.subjects)), -np.inf, np.float32)
        for s in range(len(self.subjects)):
            best[:, s] = sims[:, owner == s].max(axis=1)
        k = min(top_k, len(self.subjects))
        order = np.argsort(-best, axis=1, kind="stable")[:, :k]
        return [
            [Candidate(self.subjects[j], float(best[i, j])) for j in order[i]]
            for i in range(len(probes))
        ]


def best_match(candidates: Sequence[Candidate], threshold: float) -> str | None:
    """The open-set decision: the top candidate if it clears ``threshold``, else None."""
    if candidates and candidates[0].similarity >= threshold:
        return candidates[0].subject
    return None
