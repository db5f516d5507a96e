"""Face quality measures: sharpness of the aligned crop, and head pose from 5 landmarks.

Pure functions on arrays, used by the enrolment gates (:mod:`facerec.selection`) and
the LFW benchmark that calibrates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# The part of an aligned crop the face occupies (fractions of the side): the template's
# landmarks span x 0.35-0.68, y 0.41-0.71 of a 160-px crop; the box adds the brows and chin.
_FACE_X = (0.25, 0.75)
_FACE_Y = (0.30, 0.80)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian over the face region of an aligned crop.

    ``crop``: RGB uint8[S, S, 3] as made by the pipeline's alignment (the face region is
    fixed by the template). A sharp face scores in the hundreds; motion or focus blur,
    or a small face scaled up to S, scores low. Depends on S: compare crops of one size.
    A fused model's crop (its parts' crops side by side, wider than tall:
    :func:`facerec.fusion.pack_crops`) is measured on its leftmost square, the first part's.
    """
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be uint8[S, S, 3], got {crop.dtype}{list(crop.shape)}")
    if crop.shape[1] > crop.shape[0]:
        crop = crop[:, : crop.shape[0]]
    h, w = crop.shape[:2]
    region = crop[
        int(h * _FACE_Y[0]) : int(h * _FACE_Y[1]), int(w * _FACE_X[0]) : int(w * _FACE_X[1])
    ]
    gray = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F, ksize=1).var())


@dataclass(frozen=True)
class Pose:
    """Head pose proxies from 5 landmarks (left eye, right eye, nose, mouth corners).

    ``roll``: degrees the eye line is turned from horizontal (positive: clockwise in the
    image). ``yaw``: horizontal offset of the nose from the eyes-to-mouth midline, in
    inter-ocular distances (0 frontal, growing towards profile;
    the sign says which way). ``pitch``: how far the nose sits from its frontal height
    between the eye line and the mouth line, as a fraction of that span (0 frontal, positive
    when the nose is low, i.e. the head tilted forward or down). Proxies, not angles: they
    are used against thresholds measured on real photos.
    """

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float]:
        return {
            "yaw": round(self.yaw, 4),
            "pitch": round(self.pitch, 4),
            "roll": round(self.roll, 2),
        }


def nose_height(landmarks: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Nose height between the eye line (0) and the mouth line (1) of ``landmarks`` float[5, 2]
    (0.536 for the facenet128 card's template)."""
    p = np.asarray(landmarks, np.float64)
    eyes_y = (p[0, 1] + p[1, 1]) / 2
    mouth_y = (p[3, 1] + p[4, 1]) / 2
    return float((p[2, 1] - eyes_y) / max(mouth_y - eyes_y, 1e-6))


def pose(landmarks: np.ndarray, frontal_nose_height: float = 0.536) -> Pose:
    """:class:`Pose` of one face; ``landmarks`` float[5, 2] in image pixels.

    The landmarks are first turned about the eyes' midpoint so the eye line is level
    (undoing roll); ``frontal_nose_height`` is :func:`nose_height` of a frontal face (use
    the model card's template).
    """
    p = np.asarray(landmarks, np.float64)
    if p.shape != (5, 2):
        raise ValueError(f"landmarks must be float[5, 2], got {list(p.shape)}")
    left, right = p[0], p[1]
    dx, dy = right - left
    roll = float(np.degrees(np.arctan2(dy, dx)))
    iod = float(np.hypot(dx, dy))
    if iod < 1e-6:
        return Pose(yaw=float("inf"), pitch=float("inf"), roll=roll)
    c, s = dx / iod, dy / iod
    level = (p - (left + right) / 2) @ np.array([[c, -s], [s, c]])  # rotate by -roll
    mouth = (level[3] + level[4]) / 2
    nose = level[2]
    # x of the midline (eyes' midpoint at the origin to the mouth's midpoint) at nose height
    midline_x = mouth[0] * (nose[1] / mouth[1]) if abs(mouth[1]) > 1e-6 else 0.0
    yaw = float((nose[0] - midline_x) / iod)
    pitch = nose_height(level) - frontal_nose_height
    return Pose(yaw=yaw, pitch=float(pitch), roll=roll)
