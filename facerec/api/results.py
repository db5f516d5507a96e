"""What the public API returns: frozen dataclasses, each with a JSON-ready ``to_dict()``.

Faces are :class:`facerec.pipeline.Face` (box, score, landmarks, embedding), decisions
:class:`facerec.matching.Decision` and video results :class:`facerec.video.FrameResult`
and :class:`facerec.video.TrackEvent`: the types the command line and the gateway use.
The types here only put those together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facerec.errors import InvalidArgumentError
from facerec.matching import verified

if TYPE_CHECKING:
    from facerec.matching import Candidate, Decision
    from facerec.pipeline import Face

ThresholdSource = Literal["model_card", "argument"]


@dataclass(frozen=True, eq=False)
class Verification:
    """The 1:1 answer for two images: are their primary faces the same person?

    ``similarity`` is the cosine of the two faces' embeddings; ``match`` is
    :func:`facerec.matching.verified` at ``threshold``, the model card's calibrated 1:1
    threshold (``threshold_source`` ``model_card``) unless one was given (``argument``);
    ``faces`` the two faces compared (the largest, most central of each image).

    >>> from facerec import FaceRecognizer
    >>> recognizer = FaceRecognizer()
    >>> result = recognizer.verify(
    ...     "tests/data/lfw/Ann_Veneman_0003.jpg", "tests/data/lfw/Ann_Veneman_0005.jpg"
    ... )
    >>> result.match, result.threshold_source
    (True, 'model_card')
    >>> result.similarity >= result.threshold
    True
    >>> sorted(result.to_dict())
    ['faces', 'match', 'similarity', 'threshold', 'threshold_source']
    """

    match: bool
    similarity: float
    threshold: float
    threshold_source: ThresholdSource
    faces: tuple[Face, Face]

    @classmethod
    def between(
        cls, a: Face, b: Face, threshold: float, source: ThresholdSource = "model_card"
    ) -> Verification:
        """The decision for two embedded faces at ``threshold``."""
        if a.embedding is None or b.embedding is None:
            raise InvalidArgumentError("verification needs two embedded faces")
        similarity = float(np.dot(a.embedding, b.embedding))
        return cls(verified(similarity, threshold), similarity, threshold, source, (a, b))

    def to_dict(self) -> dict[str, Any]:
        """``{"match", "similarity", "threshold", "threshold_source", "faces"}``, as
        ``facerec verify --json`` says it (``faces``: box, score, landmarks of each)."""
        return {
            "match": self.match,
            "similarity": round(self.similarity, 6),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "faces": [f.to_dict() for f in self.faces],
        }


@dataclass(frozen=True, eq=False)
class Identification:
    """One face of a probe image searched in a gallery (open set).

    ``decision`` is the project's one open-set decision
    (:class:`facerec.matching.Decision`): the ``candidates`` best first, the operating
    point used (threshold, FPIR, gallery size, scoring method) and ``match``, the best
    candidate if it reaches the threshold, else None: someone not enrolled.

    >>> from pathlib import Path
    >>> from facerec import FaceRecognizer
    >>> gallery = FaceRecognizer().gallery()
    >>> photos = sorted(Path("tests/data/gallery").glob("Howard_Dean_*.jpg"))
    >>> gallery.add("Howard_Dean", photos[:4]).accepted
    4
    >>> (face,) = gallery.identify(photos[4])
    >>> face.match, face.decision.point.source
    ('Howard_Dean', 'calibrated')
    >>> face.to_dict()["candidates"][0]["subject"]
    'Howard_Dean'
    >>> gallery.identify("tests/data/lfw/Dean_Barker_0001.jpg")[0].match is None
    True
    """

    face: Face
    decision: Decision

    @property
    def match(self) -> str | None:
        """The subject this face is, or None when no candidate reaches the threshold."""
        return None if self.decision.match is None else self.decision.match.subject_id

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The subjects considered, best first, with their similarity."""
        return self.decision.candidates

    def to_dict(self) -> dict[str, Any]:
        """The face (box, score, landmarks) with ``candidates`` and ``match`` (a name or
        None), as ``facerec identify --json`` gives each face."""
        return {
            **self.face.to_dict(),
            "candidates": [c.to_dict() for c in self.decision.candidates],
            "match": self.match,
        }


@dataclass(frozen=True)
class RefusedPhoto:
    """A photo that gave no template: unreadable, without a face, or refused by an
    enrolment gate (its quality, or ``inconsistent_face``: it does not agree with the
    person's other photos). ``image`` is its path, or ``#i`` for the i-th image of an
    :meth:`~facerec.Gallery.add` call given as bytes, pixels or a PIL image; ``error``
    the error as JSON (``{"code", "message", ...}``).

    >>> from facerec import FaceRecognizer
    >>> gallery = FaceRecognizer().gallery()
    >>> result = gallery.add("Ann_Veneman", [b"not an image"])
    >>> (refused,) = result.refused
    >>> refused.image, refused.code
    ('#0', 'not_an_image')
    >>> sorted(refused.to_dict())
    ['error', 'image', 'subject']
    """

    subject: str
    image: str
    error: dict[str, Any]

    @property
    def code(self) -> str:
        """The refusal's machine-readable code (``no_face``, ``blurry_face``, ...)."""
        return str(self.error["code"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RefusedPhoto:
        """From ``{"image", "subject", "error"}`` (what the gallery folder reports)."""
        return cls(str(raw["subject"]), str(raw["image"]), dict(raw["error"]))

    def to_dict(self) -> dict[str, Any]:
        """``{"image", "subject", "error"}``, as ``facerec identify`` lists
        ``gallery.errors``."""
        return {"image": self.image, "subject": self.subject, "error": self.error}


@dataclass(frozen=True)
class Enrolment:
    """What :meth:`facerec.Gallery.add` made of one person's photos: how many became
    templates and which were refused, with why.

    >>> from pathlib import Path
    >>> from facerec import FaceRecognizer
    >>> gallery = FaceRecognizer().gallery()
    >>> photos = sorted(Path("tests/data/gallery").glob("Cruz_Bustamante_*.jpg"))
    >>> stranger = "tests/data/gallery/John_Kerry_0001.jpg"
    >>> result = gallery.add("Cruz_Bustamante", [*photos[:4], stranger])
    >>> result.accepted, [r.code for r in result.refused]
    (4, ['inconsistent_face'])
    >>> result.to_dict()["refused"][0]["image"]
    'tests/data/gallery/John_Kerry_0001.jpg'
    """

    subject: str
    accepted: int
    refused: tuple[RefusedPhoto, ...]

    def to_dict(self) -> dict[str, Any]:
        """``{"subject", "accepted", "refused": [...]}``."""
        return {
            "subject": self.subject,
            "accepted": self.accepted,
            "refused": [r.to_dict() for r in self.refused],
        }


__all__ = ["Enrolment", "Identification", "RefusedPhoto", "ThresholdSource", "Verification"]
