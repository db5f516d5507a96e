"""Enrolment through the core's policy (:mod:`facerec.selection`): which face of an upload
becomes a template, and the gates it must pass.

- :func:`choose_face`: ``only`` (refuse several), ``primary`` (:func:`primary_face`: the
  largest, most central face, never simply the detector's most confident one) or an index
  as listed by ``/v1/detect``.
- :func:`enrolment_quality`: the per-face ``quality`` a subject's faces and ``/v1/detect``
  report, a summary in [0, 1] (detection score, scaled down for faces under
  :data:`QUALITY_SIDE` px); the gates decide, this only ranks photos.
- The gates themselves are :func:`facerec.selection.check_enrolment`, each refusal its own
  code (:data:`REFUSAL_CODES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerec.detection.types import Detections
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.pipeline import Face
from facerec.selection import (
    BlurryFaceError,
    ExtremePoseError,
    FaceCutOffError,
    FaceQuality,
    FaceTooSmallError,
    InconsistentFaceError,
    LowDetectionScoreError,
    primary_face,
)

QUALITY_SIDE = 80.0  # faces this many pixels across (short side) or more lose nothing

REFUSAL_CODES = tuple(
    e.code
    for e in (
        FaceTooSmallError,
        LowDetectionScoreError,
        FaceCutOffError,
        BlurryFaceError,
        ExtremePoseError,
        InconsistentFaceError,
    )
)


class MultipleFacesError(FaceRecError):
    """An enrolment image shows several faces and none was chosen."""

    code = "multiple_faces"
    http_status = 422


def choose_face(detections: Detections, height: int, width: int, choice: str) -> int:
    """Index in ``detections`` (of an image ``height`` x ``width``) of the face to enrol:
    ``only`` refuses several faces, ``primary`` takes :func:`primary_face`, a number takes
    that face in detection order (as ``/v1/detect`` lists them)."""
    if len(detections) == 0:
        raise NoFaceError("no face found in the image")
    if choice == "only":
        if len(detections) > 1:
            raise MultipleFacesError(
                f"{len(detections)} faces in the image: choose one with face=primary or "
                "face=<index> (indices as returned by /v1/detect)",
                faces=[face_at(detections, k).to_dict() for k in range(len(detections))],
            )
        return 0
    if choice == "primary":
        return primary_face(detections, height, width)
    if choice.isdigit() and int(choice) < len(detections):
        return int(choice)
    raise InvalidArgumentError(
        f"face must be 'only', 'primary' or an index below {len(detections)}",
        code="invalid_face_choice",
    )


def face_at(detections: Detections, k: int, embedding: np.ndarray | None = None) -> Face:
    """Detection ``k`` as a :class:`Face` (with ``embedding`` float32[D] if given)."""
    return Face(
        detections.boxes[k], float(detections.scores[k]), detections.landmarks[k], embedding
    )


def enrolment_quality(quality: FaceQuality) -> float:
    """Detection score times min(1, short side / :data:`QUALITY_SIDE`): in [0, 1]."""
    return round(quality.score * min(1.0, quality.face_size / QUALITY_SIDE), 4)


def face_quality(face: Face) -> float:
    """:func:`enrolment_quality` of a detected face."""
    side = float(min(face.box[2] - face.box[0], face.box[3] - face.box[1]))
    return round(float(face.score) * min(1.0, side / QUALITY_SIDE), 4)


@dataclass(frozen=True)
class Prepared:
    """An upload's chosen face, embedded and past the quality gates; the consistency gate
    (which needs the subject's other templates) is still to come."""

    face: Face  # with its embedding
    crop: np.ndarray  # uint8[S, S, 3] aligned
    image_size: tuple[int, int]  # (height, width)
    digest: str  # sha256 of the upload

    @property
    def embedding(self) -> np.ndarray:
        """float32[D], unit."""
        assert self.face.embedding is not None
        return self.face.embedding
