"""Which face of a photo to use, and whether it is fit to enrol.

- :func:`primary_face`: the face a single-face operation uses (the largest, most central;
  never simply the detector's most confident one, which in a group photo may be someone
  standing at the side).
- :func:`check_enrolment`: the enrolment gates, each refusal with its own error code:
  ``face_too_small``, ``low_detection_score``, ``face_cut_off``, ``blurry_face``,
  ``extreme_pose``, ``inconsistent_face`` (a face that does not agree with the subject's
  other templates; ``force`` skips only this gate).
- :func:`consensus_order`: the order in which a folder of photos of one person is best
  enrolled (most typical first), so one wrong photo cannot reject the right ones.

The default thresholds (:class:`EnrolmentGates`) were set on LFW so that ordinary photos
pass (``facerec bench lfw-openset`` reports how many each gate refuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from facerec.detection.types import Detections
from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.matching import centroid
from facerec.quality import Pose, pose, sharpness


def primary_face(detections: Detections, height: int, width: int) -> int:
    """Index of the face a single-face operation should use: the largest and most central.

    Score = box area - 2 * squared distance of the box centre from the image centre
    (both in px^2), so a face twice as wide wins unless it is far off centre.
    """
    if len(detections) == 0:
        raise InvalidArgumentError("no faces to choose from")
    b = detections.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    cx = (b[:, 0] + b[:, 2]) / 2 - width / 2
    cy = (b[:, 1] + b[:, 3]) / 2 - height / 2
    return int(np.argmax(area - 2.0 * (cx**2 + cy**2)))


class FaceLike(Protocol):
    """What the gates read of a face (:class:`facerec.pipeline.Face` is one)."""

    @property
    def box(self) -> np.ndarray: ...  # float32[4] x1, y1, x2, y2

    @property
    def score(self) -> float: ...

    @property
    def landmarks(self) -> np.ndarray: ...  # float32[5, 2]

    @property
    def embedding(self) -> np.ndarray | None: ...  # float32[D], unit


class EnrolmentRefusedError(FaceRecError):
    """A face that should not become a template; ``details`` carry its measured quality."""

    code = "enrolment_refused"
    http_status = 422


class FaceTooSmallError(EnrolmentRefusedError):
    code = "face_too_small"


class LowDetectionScoreError(EnrolmentRefusedError):
    code = "low_detection_score"


class FaceCutOffError(EnrolmentRefusedError):
    code = "face_cut_off"


class BlurryFaceError(EnrolmentRefusedError):
    code = "blurry_face"


class ExtremePoseError(EnrolmentRefusedError):
    code = "extreme_pose"


class InconsistentFaceError(EnrolmentRefusedError):
    code = "inconsistent_face"


@dataclass(frozen=True)
class EnrolmentGates:
    """Thresholds of the enrolment gates (a gate set to None is off).

    ``min_face_size``: short side of the detected box, px. ``min_score``: detection
    score. ``min_sharpness``: :func:`facerec.quality.sharpness` of the aligned crop
    (160 px). ``max_yaw``, ``max_pitch`` (absolute) and ``max_roll`` (degrees):
    :func:`facerec.quality.pose` proxies. ``min_consistency``: cosine between the new
    face and the centroid of the subject's existing templates. ``max_outside``: the
    fraction of the box that may lie outside the image. ``frontal_nose_height``: the
    model card template's value (:func:`facerec.quality.nose_height`).
    """

    min_face_size: float | None = 40.0
    min_score: float | None = 0.90
    min_sharpness: float | None = 15.0
    max_yaw: float | None = 0.5
    max_pitch: float | None = 0.3
    max_roll: float | None = 30.0
    min_consistency: float | None = 0.40
    max_outside: float | None = 0.5
    frontal_nose_height: float = 0.536


DEFAULT_GATES = EnrolmentGates()


@dataclass(frozen=True)
class FaceQuality:
    """The measures the gates look at, for one face."""

    face_size: float
    score: float
    outside: float
    pose: Pose
    sharpness: float | None = None
    consistency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "face_size": round(self.face_size, 1),
            "score": round(self.score, 5),
            "outside": round(self.outside, 4),
            "pose": self.pose.to_dict(),
        }
        if self.sharpness is not None:
            out["sharpness"] = round(self.sharpness, 2)
        if self.consistency is not None:
            out["consistency"] = round(self.consistency, 4)
        return out


def _outside_fraction(box: np.ndarray, height: int, width: int) -> float:
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 1.0
    inside = max(min(x2, width) - max(x1, 0.0), 0.0) * max(min(y2, height) - max(y1, 0.0), 0.0)
    return 1.0 - inside / area


def assess(
    face: FaceLike,
    image_size: tuple[int, int],
    crop: np.ndarray | None = None,
    templates: np.ndarray | None = None,
    frontal_nose_height: float = DEFAULT_GATES.frontal_nose_height,
) -> FaceQuality:
    """Measure ``face`` (in an image of ``image_size`` = (height, width)): size, score,
    fraction outside the image, pose; sharpness if its aligned ``crop`` uint8[S, S, 3] is
    given; consistency if the subject's existing ``templates`` float32[K, D] are given
    (and the face has an embedding)."""
    b = np.asarray(face.box, np.float64)
    consistency = None
    if templates is not None and len(templates) and face.embedding is not None:
        consistency = float(centroid(np.asarray(templates, np.float32)) @ face.embedding)
    return FaceQuality(
        face_size=float(min(b[2] - b[0], b[3] - b[1])),
        score=float(face.score),
        outside=_outside_fraction(b, image_size[0], image_size[1]),
        pose=pose(np.asarray(face.landmarks), frontal_nose_height),
        sharpness=None if crop is None else sharpness(crop),
        consistency=consistency,
    )


def check_quality(quality: FaceQuality, gates: EnrolmentGates = DEFAULT_GATES) -> None:
    """Raise the first failing gate's error (consistency excluded), else return."""
    measured = quality.to_dict()
    g, q = gates, quality
    if g.min_face_size is not None and q.face_size < g.min_face_size:
        raise FaceTooSmallError(
            f"face is {q.face_size:.0f} px across, below {g.min_face_size:.0f} px", quality=measured
        )
    if g.min_score is not None and q.score < g.min_score:
        raise LowDetectionScoreError(
            f"detection score {q.score:.3f} is below {g.min_score}", quality=measured
        )
    if g.max_outside is not None and q.outside > g.max_outside:
        raise FaceCutOffError(
            f"{100 * q.outside:.0f} % of the face lies outside the image", quality=measured
        )
    if g.min_sharpness is not None and q.sharpness is not None and q.sharpness < g.min_sharpness:
        raise BlurryFaceError(
            f"face sharpness {q.sharpness:.1f} is below {g.min_sharpness}", quality=measured
        )
    p = q.pose
    if (
        (g.max_yaw is not None and abs(p.yaw) > g.max_yaw)
        or (g.max_pitch is not None and abs(p.pitch) > g.max_pitch)
        or (g.max_roll is not None and abs(p.roll) > g.max_roll)
    ):
        raise ExtremePoseError(
            f"head pose too far from frontal (yaw {p.yaw:+.2f}, pitch {p.pitch:+.2f}, "
            f"roll {p.roll:+.0f} deg; limits {g.max_yaw}, {g.max_pitch}, {g.max_roll} deg)",
            quality=measured,
        )


def check_consistency(quality: FaceQuality, gates: EnrolmentGates = DEFAULT_GATES) -> None:
    """Raise :class:`InconsistentFaceError` if the face disagrees with the subject's
    existing templates (no templates yet, or the gate off: passes)."""
    c = quality.consistency
    if gates.min_consistency is not None and c is not None and c < gates.min_consistency:
        raise InconsistentFaceError(
            f"the face does not match the subject's other templates (cosine {c:.3f} to "
            f"their centroid, below {gates.min_consistency}); enrol with force to keep it",
            quality=quality.to_dict(),
        )


def check_enrolment(
    face: FaceLike,
    image_size: tuple[int, int],
    crop: np.ndarray | None = None,
    templates: np.ndarray | None = None,
    gates: EnrolmentGates = DEFAULT_GATES,
    force: bool = False,
) -> FaceQuality:
    """Every enrolment gate for one face; returns its :class:`FaceQuality` or raises the
    first refusal (an :class:`EnrolmentRefusedError` subclass with its own code and the
    measured quality in ``details``).

    ``image_size`` (height, width) of the image the face's box refers to; ``crop`` its
    aligned crop (``FacePipeline.align``; without it the blur gate is skipped);
    ``templates`` float32[K, D] the subject's existing templates (none: the consistency
    gate passes). ``force`` skips the consistency gate only.
    """
    quality = assess(face, image_size, crop, templates, gates.frontal_nose_height)
    check_quality(quality, gates)
    if not force:
        check_consistency(quality, gates)
    return quality


def consensus_order(embeddings: np.ndarray) -> list[int]:
    """Indices of ``embeddings`` float32[K, D] from the most to the least typical (by
    summed cosine with the others): enrolling in this order, a photo of someone else
    in a person's folder meets the majority's templates and is the one refused."""
    if len(embeddings) <= 1:
        return list(range(len(embeddings)))
    sims = embeddings @ embeddings.T
    agreement = sims.sum(axis=1) - np.diag(sims)
    return [int(i) for i in np.argsort(-agreement, kind="stable")]
