"""dlib's 150x150 face chips, from dlib's 5 points or from the project's MTCNN landmarks.

dlib's descriptor network was trained on chips cut by ``get_face_chip_details(shape, 150,
0.25)``: a similarity fit of the 5 points of ``shape_predictor_5_face_landmarks`` (CC0) to a
fixed template, the chip a 150x150 window of the rotated, scaled image. The two landmark
sets differ:

* dlib's 5 points: the outer and inner corner of the (image-)right eye, the outer and inner
  corner of the (image-)left eye, the base of the nose (subnasale);
* MTCNN's 5 points: the two eye *centres*, the nose *tip*, the two mouth corners.

So the MTCNN chip needs its own template in dlib's chip frame. :data:`MTCNN_TEMPLATE` is
measured, not guessed: for every face of a set of LFW images, dlib's shape predictor (on the
MTCNN box) gives dlib's chip transform, the MTCNN landmarks of the same face are mapped
through it, and the template is their mean (:func:`measure_template`;
``python -m export.dlib_align --lfw DIR`` re-measures it). Warping the MTCNN landmarks onto it
with the project's similarity warp (:func:`facerec.alignment.warp_similarity`) then gives a
chip without dlib's shape predictor at serving time. The simpler choice, fitting only the two
eye centres to the midpoints of dlib's eye corners (:data:`EYE_CENTRE_TEMPLATE`), is kept
for the comparison.

dlib is imported only by the functions that need it (:func:`dlib_chips`): it is an
export/dev dependency (``dlib-bin``), never a serving one.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerec.alignment import similarity_transform, warp_similarity
from facerec.detection.types import Detections
from facerec.selection import primary_face

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's 5-point chip template (get_face_chip_details), in units of the unpadded face box:
# image-right eye outer and inner corner, image-left eye outer and inner corner, nose base.
DLIB_5POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def dlib_template(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's 5 template points in chip pixels: float64[5, 2]."""
    return (padding + DLIB_5POINT_TEMPLATE) / (2 * padding + 1) * size


_T = dlib_template()
EYE_CENTRE_TEMPLATE = np.array([(_T[2] + _T[3]) / 2, (_T[0] + _T[1]) / 2])
"""The midpoints of dlib's eye corners (image-left eye first), chip pixels: float64[2, 2]."""

# Measured by measure_template() on 1,000 LFW images (every 7th of the sorted list, edge-
# padded to 250x250, the MTCNN primary face, dlib's 5 points predicted on the MTCNN box):
# mean MTCNN landmark positions in dlib's 150x150 chip frame.
MTCNN_TEMPLATE = np.array(
    [
        [47.48, 45.99],
        [102.62, 45.94],
        [75.03, 78.48],
        [50.57, 106.23],
        [99.06, 106.29],
    ]
)
"""MTCNN's left eye, right eye, nose, mouth left, mouth right in dlib's chip frame."""


def dlib_chip_matrix(parts: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """The image-to-chip affine map float64[2, 3] that dlib's ``get_face_chip`` applies for
    its 5 points ``parts`` float[5, 2] (bilinear sampling; dlib also pre-shrinks with an image
    pyramid when the face is more than twice the chip's size).

    dlib fits chip template -> image points by least squares, keeps the fit's rotation and
    scale ``s`` as a rectangle of ``size * s`` px centred on the image of the chip centre,
    and maps the chip's corner pixels onto that rectangle's corners.
    """
    fit = similarity_transform(dlib_template(size), np.asarray(parts, np.float64))
    centre = fit[:, :2] @ np.array([size / 2, size / 2]) + fit[:, 2]
    scale = float(math.hypot(fit[0, 0], fit[1, 0]))
    # chip pixel p -> centre + rot * step * (p - (size-1)/2), step = (size*s - 1)/(size - 1)
    step = (size * scale - 1) / (size - 1)
    linear = fit[:, :2] / scale * step
    chip_to_image = np.hstack([linear, (centre - linear @ np.full(2, (size - 1) / 2))[:, None]])
    inverse = np.linalg.inv(np.vstack([chip_to_image, [0.0, 0.0, 1.0]]))
    return inverse[:2]


def to_chip(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points`` float[K, 2] through an affine ``matrix`` float[2, 3]."""
    return np.asarray(np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2])


def mtcnn_chip(image: np.ndarray, landmarks: np.ndarray, eyes_only: bool = False) -> np.ndarray:
    """The 150x150 chip of one face from its MTCNN landmarks float[5, 2]: uint8[150, 150, 3].

    ``eyes_only``: fit the two eye centres to :data:`EYE_CENTRE_TEMPLATE` instead of all five
    points to :data:`MTCNN_TEMPLATE` (the comparison variant).
    """
    if eyes_only:
        return warp_similarity(image, landmarks[:2], EYE_CENTRE_TEMPLATE, CHIP_SIZE)
    return warp_similarity(image, landmarks, MTCNN_TEMPLATE, CHIP_SIZE)


def primary_faces(
    images: Sequence[np.ndarray], detections: Sequence[Detections]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(image index, box float[4], landmarks float[5, 2]) of each image's primary face."""
    faces = []
    for i, (image, det) in enumerate(zip(images, detections, strict=True)):
        if len(det):
            k = primary_face(det, image.shape[0], image.shape[1])
            faces.append((i, det.boxes[k], det.landmarks[k]))
    return faces


def dlib_parts(image: np.ndarray, box: np.ndarray, predictor: Any) -> np.ndarray:
    """dlib's 5 points float64[5, 2] for the face in ``box`` (x1, y1, x2, y2)."""
    import dlib

    x1, y1, x2, y2 = (round(float(v)) for v in box)
    shape = predictor(image, dlib.rectangle(x1, y1, x2, y2))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], float)


def dlib_chips(
    images: Sequence[np.ndarray], detections: Sequence[Detections], predictor_path: Path
) -> tuple[np.ndarray, list[np.ndarray]]:
    """dlib's own chips (``get_face_chip``, 5-point predictor on the MTCNN box) of each
    image's primary face: uint8[N, 150, 150, 3], and dlib's 5 points of each face."""
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path))
    chips, parts = [], []
    for i, box, _ in primary_faces(images, detections):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        shape = predictor(images[i], dlib.rectangle(x1, y1, x2, y2))
        chips.append(dlib.get_face_chip(images[i], shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        parts.append(np.array([[p.x, p.y] for p in shape.parts()], float))
    return np.stack(chips).astype(np.uint8), parts


def measure_template(
    images: Sequence[np.ndarray], detections: Sequence[Detections], predictor_path: Path
) -> dict[str, Any]:
    """Mean and spread of the MTCNN landmarks in dlib's chip frames (see module docstring)."""
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path))
    mapped = []
    for i, box, marks in primary_faces(images, detections):
        matrix = dlib_chip_matrix(dlib_parts(images[i], box, predictor))
        mapped.append(to_chip(marks, matrix))
    points = np.stack(mapped)
    return {
        "faces": len(points),
        "template": np.round(points.mean(axis=0), 2).tolist(),
        "std_px": np.round(points.std(axis=0), 2).tolist(),
    }


def _main(argv: Sequence[str] | None = None) -> int:
    from facerec.detection.mtcnn import MTCNNDetector
    from facerec.imaging.decode import read_image
    from facerec.imaging.pad import pad_edges
    from facerec.models import model_path

    parser = argparse.ArgumentParser(description="re-measure MTCNN_TEMPLATE on LFW")
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder with images/")
    parser.add_argument("--predictor", type=Path, required=True)
    parser.add_argument("--every", type=int, default=7)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    paths = sorted((args.lfw / "images").glob("*.jpg"))[:: args.every][: args.limit]
    detector = MTCNNDetector(model_path("pnet"), model_path("rnet"), model_path("onet"))
    images = [pad_edges(read_image(p), 50) for p in paths]
    detections = [d for k in range(0, len(images), 32) for d in detector.detect(images[k : k + 32])]
    result = measure_template(images, detections, args.predictor)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
