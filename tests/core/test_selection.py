"""Which face of a photo is used, and the enrolment gates, on real faces."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from facerec.detection.types import Detections
from facerec.imaging.decode import read_image
from facerec.models import load_model_card
from facerec.pipeline import Face, FacePipeline
from facerec.quality import nose_height, pose, sharpness
from facerec.selection import (
    DEFAULT_GATES,
    BlurryFaceError,
    EnrolmentGates,
    ExtremePoseError,
    FaceCutOffError,
    FaceTooSmallError,
    InconsistentFaceError,
    LowDetectionScoreError,
    check_enrolment,
    consensus_order,
    primary_face,
)
from tests.support.data import GALLERY, lfw_image, lfw_path


def analysed(pipeline: FacePipeline, image: np.ndarray) -> tuple[Face, np.ndarray]:
    """The primary face of ``image`` and its aligned crop."""
    (result,) = pipeline.analyze([image], primary_only=True)
    assert result.faces, "no face found"
    face = result.faces[0]
    det = Detections(face.box[None], np.array([face.score], np.float32), face.landmarks[None])
    return face, pipeline.align(image, det)[0]


def gate(pipeline: FacePipeline, image: np.ndarray, **kwargs: object) -> None:
    face, crop = analysed(pipeline, image)
    check_enrolment(face, image.shape[:2], crop, **kwargs)


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    """A real photo where the person in front is not the detector's most confident face:
    a large, dim face in the middle (Dean Barker) and two small, crisp faces in corners."""
    canvas = np.full((420, 720, 3), 90, np.uint8)
    middle = cv2.resize(read_image(lfw_path("Dean_Barker_0001")), (240, 240), cv2.INTER_CUBIC)
    dim = np.clip((middle.astype(np.float32) - 128) * 0.3 + 128, 0, 255).astype(np.uint8)
    canvas[90:330, 240:480] = dim
    canvas[20:120, 20:120] = cv2.resize(read_image(lfw_path("Amber_Tamblyn_0001")), (100, 100))
    canvas[300:400, 600:700] = cv2.resize(read_image(lfw_path("Ann_Veneman_0003")), (100, 100))
    return canvas


def test_primary_face_is_the_largest_central_not_the_most_confident(
    pipeline: FacePipeline, crowd: np.ndarray
) -> None:
    (det,) = pipeline.detect([crowd])
    assert len(det) == 3
    confident = int(np.argmax(det.scores))
    chosen = primary_face(det, *crowd.shape[:2])
    assert chosen != confident  # the old "detection index 0" would take a corner face
    x1, y1, x2, y2 = det.boxes[chosen]
    assert 240 < (x1 + x2) / 2 < 480 and 90 < (y1 + y2) / 2 < 330 and x2 - x1 > 120
    (only,) = pipeline.analyze([crowd], primary_only=True)
    assert only.detected == 3 and len(only.faces) == 1
    (dean,) = pipeline.analyze([lfw_image("Dean_Barker_0001")], primary_only=True)
    a, b = only.faces[0].embedding, dean.faces[0].embedding
    assert a is not None and b is not None and float(a @ b) >= pipeline.threshold


@pytest.mark.parametrize("path", sorted(GALLERY.glob("*.jpg"))[:12], ids=lambda p: p.stem)
def test_ordinary_photos_pass(pipeline: FacePipeline, path: object) -> None:
    image = read_image(path)
    gate(pipeline, image)


def test_blur_is_refused(pipeline: FacePipeline) -> None:
    image = lfw_image("Angela_Bassett_0001")
    gate(pipeline, image)
    with pytest.raises(BlurryFaceError) as err:
        gate(pipeline, cv2.GaussianBlur(image, (0, 0), 3.0))
    assert err.value.code == "blurry_face" and err.value.http_status == 422
    assert err.value.details["quality"]["sharpness"] < DEFAULT_GATES.min_sharpness


def test_sharpness_falls_with_blur(pipeline: FacePipeline) -> None:
    _, crop = analysed(pipeline, lfw_image("Ann_Veneman_0003"))
    values = [sharpness(cv2.GaussianBlur(crop, (0, 0), s) if s else crop) for s in (0, 1, 2, 4)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0] / 10


def test_rotated_face_is_refused_for_pose(pipeline: FacePipeline) -> None:
    image = lfw_image("Angela_Bassett_0001")
    h, w = image.shape[:2]
    turned = cv2.warpAffine(
        image,
        cv2.getRotationMatrix2D((w / 2, h / 2), 45, 1.0),
        (w, h),
        borderMode=cv2.BORDER_REPLICATE,
    )
    face, _ = analysed(pipeline, turned)
    assert pose(face.landmarks).roll == pytest.approx(-45, abs=12)  # counter-clockwise turn
    with pytest.raises(ExtremePoseError) as err:
        gate(pipeline, turned)
    assert err.value.code == "extreme_pose"
    gate(pipeline, turned, gates=EnrolmentGates(max_roll=60))


def test_profile_photo_is_refused_for_pose(pipeline: FacePipeline) -> None:
    image = read_image(GALLERY / "Xanana_Gusmao_0002.jpg")  # turned about 60 degrees
    with pytest.raises(ExtremePoseError):
        gate(pipeline, image)


def test_small_face_is_refused(pipeline: FacePipeline) -> None:
    image = lfw_image("Angela_Bassett_0001")
    small = cv2.resize(image, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceTooSmallError) as err:
        gate(pipeline, small)
    assert err.value.details["quality"]["face_size"] < 40


def test_unsure_detection_is_refused(pipeline: FacePipeline) -> None:
    image = lfw_image("Dean_Barker_0001")
    face, crop = analysed(pipeline, image)
    with pytest.raises(LowDetectionScoreError):
        check_enrolment(face, image.shape[:2], crop, gates=EnrolmentGates(min_score=0.99999999))


@dataclass
class _Face:
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray | None = None


def test_face_mostly_outside_the_picture_is_refused() -> None:
    template = np.asarray(load_model_card().template, np.float32)
    face = _Face(np.array([-120, 0, 40, 160], np.float32), 0.999, template)
    with pytest.raises(FaceCutOffError):
        check_enrolment(face, (160, 160))
    inside = _Face(np.array([0, 0, 160, 160], np.float32), 0.999, template)
    assert check_enrolment(inside, (160, 160)).outside == 0.0


def test_inconsistent_face_is_refused_unless_forced(pipeline: FacePipeline) -> None:
    ben = [read_image(GALLERY / f"Ben_Affleck_000{i}.jpg") for i in (3, 4, 5)]
    templates = np.stack([analysed(pipeline, im)[0].embedding for im in ben])
    same = read_image(GALLERY / "Ben_Affleck_0006.jpg")
    face, crop = analysed(pipeline, same)
    gate_quality = check_enrolment(face, same.shape[:2], crop, templates)
    assert gate_quality.consistency is not None and gate_quality.consistency > 0.5
    other = read_image(GALLERY / "John_Kerry_0004.jpg")
    face, crop = analysed(pipeline, other)
    with pytest.raises(InconsistentFaceError) as err:
        check_enrolment(face, other.shape[:2], crop, templates)
    assert err.value.code == "inconsistent_face"
    quality = check_enrolment(face, other.shape[:2], crop, templates, force=True)
    assert quality.consistency is not None and quality.consistency < 0.4


def test_consensus_order_puts_the_odd_photo_last(pipeline: FacePipeline) -> None:
    images = [read_image(GALLERY / f"Howard_Dean_000{i}.jpg") for i in (1, 2)]
    images.insert(1, read_image(GALLERY / "Choi_Sung-hong_0001.jpg"))
    images.append(read_image(GALLERY / "Howard_Dean_0003.jpg"))
    emb = np.stack([analysed(pipeline, im)[0].embedding for im in images])
    assert consensus_order(emb)[-1] == 1
    assert consensus_order(emb[:1]) == [0]


def test_pose_proxies_on_hand_made_landmarks() -> None:
    template = np.asarray(load_model_card().template, np.float64)
    assert nose_height(template) == pytest.approx(DEFAULT_GATES.frontal_nose_height, abs=1e-3)
    frontal = pose(template)
    assert abs(frontal.roll) < 1.5 and abs(frontal.pitch) < 1e-3 and abs(frontal.yaw) < 0.02
    iod = np.hypot(*(template[1] - template[0]))
    a = np.radians(20)
    turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    rotated = pose((template - template.mean(0)) @ turn.T * 2.0)  # also scaled: ratios hold
    assert rotated.roll == pytest.approx(frontal.roll + 20, abs=1e-6)
    assert rotated.yaw == pytest.approx(frontal.yaw, abs=1e-6)
    assert rotated.pitch == pytest.approx(frontal.pitch, abs=1e-6)
    nose_left = template.copy()
    nose_left[2, 0] -= 0.3 * iod  # the nose turns with the head; the eyes and mouth stay
    assert pose(nose_left).yaw == pytest.approx(frontal.yaw - 0.3, abs=0.02)
    nose_down = template.copy()
    nose_down[2, 1] += 0.2 * (template[3, 1] - template[0, 1])
    assert pose(nose_down).pitch > 0.15
