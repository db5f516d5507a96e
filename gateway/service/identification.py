"""1:N, independent of HTTP: every face of an image identified against the gallery the
caller searches, at one operating point per request.

The decision itself (candidates ranked, decided at the point, filtered to what the caller
may see, named) is :meth:`gateway.service.matching.IndexMatcher.identify`'s; here are the
images, the operating point of a request, and the audit (one ``identify`` event per face,
with the best score seen or not, never a candidate list).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.matching import Candidate
from facerec.openset import OperatingPoint
from facerec.pipeline import Face, ImageFaces
from gateway.service.analyzer import Analyzer
from gateway.service.matching import IndexMatcher, scope_of
from gateway.service.types import (
    Audit,
    Caller,
    FailedImage,
    Identification,
    IdentifiedFace,
    Upload,
)


def _check_top_k(top_k: int) -> None:
    if not 1 <= top_k <= 100:
        raise InvalidArgumentError("top_k must be between 1 and 100")


class IdentificationService:
    """What the identify routes, the job workers and video call."""

    def __init__(self, matcher: IndexMatcher, analyzer: Analyzer, audit: Audit) -> None:
        self.matcher, self.analyzer, self.audit = matcher, analyzer, audit

    def operating_point(
        self,
        fpir: float | None = None,
        threshold: float | None = None,
        caller: Caller | None = None,
    ) -> OperatingPoint:
        """The identification threshold for the gallery's current size: an explicit
        ``threshold``, else the model card's for ``fpir`` (default ``FACEREC_IDENTIFY_FPIR``).
        Given a ``caller`` without the admin role, a point looser than the service's is
        refused (403 ``threshold_not_allowed``)."""
        return self.matcher.operating_point(fpir, threshold, caller)

    def match_embeddings(
        self, probes: np.ndarray, top_k: int, caller: Caller | None = None
    ) -> list[list[Candidate]]:
        """For each probe float32[N, D], up to ``top_k`` enrolled subjects ranked by the
        policy's scoring (centroid by default) over the index, best first. No threshold
        is applied: decide with :func:`facerec.matching.decide` at :meth:`operating_point`,
        and show a caller only :func:`~gateway.service.matching.visible` candidates."""
        _check_top_k(top_k)
        return self.matcher.match(probes, top_k, scope_of(caller))[0]

    def identify_faces(
        self,
        faces: Sequence[Face],
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        caller: Caller | None = None,
        point: OperatingPoint | None = None,
    ) -> list[IdentifiedFace]:
        """Candidates (subjects ranked by the policy, best first; those ``caller`` may see)
        and the open-set decision per face, at ``point`` (default: :meth:`operating_point`
        for ``fpir``/``threshold``)."""
        _check_top_k(top_k)
        if point is None:
            point = self.operating_point(fpir, threshold, caller)
        if not faces:
            return []
        probes = np.stack([f.embedding for f in faces if f.embedding is not None])
        decided = self.matcher.identify(probes, top_k, point, caller)
        return [
            IdentifiedFace(face, d.candidates, d.match, d.best)
            for face, d in zip(faces, decided, strict=True)
        ]

    def identify(
        self,
        upload: Upload,
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
    ) -> Identification:
        """Every face of one image, with candidates and the open-set decision."""
        point = self.operating_point(fpir, threshold, caller)
        found = self.analyzer.analyze(upload.data)
        return self._identified(upload.name, found, caller, top_k, point)

    def identify_many(
        self,
        uploads: Sequence[Upload],
        caller: Caller,
        top_k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
    ) -> list[Identification | FailedImage]:
        """:meth:`identify` for several uploads (one operating point for all); a bad upload
        yields its error entry."""
        point = self.operating_point(fpir, threshold, caller)
        results: list[Identification | FailedImage] = []
        for upload, found in zip(uploads, self.analyzer.analyze_many(uploads), strict=True):
            if isinstance(found, FaceRecError):
                results.append(FailedImage(upload.name, found))
            else:
                results.append(self._identified(upload.name, found, caller, top_k, point))
        return results

    def _identified(
        self, name: str, found: ImageFaces, caller: Caller, top_k: int, point: OperatingPoint
    ) -> Identification:
        faces = self.identify_faces(found.faces, top_k, caller=caller, point=point)
        for face in faces:
            match = face.match
            self.audit(
                "identify",
                "match" if match else "no_match",
                caller,
                subject=match.subject_id if match else None,
                score=None if face.best is None else round(face.best, 6),
                threshold=point.threshold,
            )
        if not faces:
            self.audit("identify", "no_match", caller, threshold=point.threshold)
        return Identification(name, point, faces)
