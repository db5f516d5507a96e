"""The in-process pipeline on real LFW faces with the real converted weights."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.alignment import align_faces, similarity_transform
from facerec.matching import Gallery, IdentificationPolicy
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.selection import primary_face
from tests.support.data import DIFFERENT_PAIRS, SAME_PAIRS, lfw_image


def similarity(pipeline: FacePipeline, a: str, b: str) -> float:
    ra, rb = pipeline.analyze([lfw_image(a), lfw_image(b)], primary_only=True)
    ea, eb = ra.faces[0].embedding, rb.faces[0].embedding
    assert ea is not None and eb is not None
    return float(ea @ eb)


@pytest.mark.parametrize(("a", "b"), SAME_PAIRS)
def test_same_person_pairs_verify(pipeline: FacePipeline, a: str, b: str) -> None:
    assert similarity(pipeline, a, b) >= pipeline.threshold


@pytest.mark.parametrize(("a", "b"), DIFFERENT_PAIRS)
def test_different_person_pairs_do_not(pipeline: FacePipeline, a: str, b: str) -> None:
    assert similarity(pipeline, a, b) < pipeline.threshold


def test_one_face_with_plausible_landmarks(pipeline: FacePipeline) -> None:
    (det,) = pipeline.detect([lfw_image("Angela_Bassett_0001")])
    assert len(det) == 1
    (left_eye, right_eye, nose, mouth_left, mouth_right) = det.landmarks[0]
    x1, _, x2, _ = det.boxes[0]
    assert 60 < x2 - x1 < 200 and det.scores[0] > 0.95
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_group_photo_finds_every_face(pipeline: FacePipeline, group_photo: np.ndarray) -> None:
    (result,) = pipeline.analyze([group_photo])
    assert result.detected == 3
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in result.faces)
    assert [int(c // 200) for c in centres] == [0, 1, 2]
    embeddings = np.stack([f.embedding for f in result.faces if f.embedding is not None])
    sims = embeddings @ embeddings.T
    assert (sims[~np.eye(3, dtype=bool)] < pipeline.threshold).all()  # three people


def test_primary_face_is_the_largest_central_one(
    pipeline: FacePipeline, group_photo: np.ndarray
) -> None:
    (det,) = pipeline.detect([group_photo])
    chosen = det.boxes[primary_face(det, *group_photo.shape[:2])]
    assert 200 < (chosen[0] + chosen[2]) / 2 < 440  # the middle face
    (only,) = pipeline.analyze([group_photo], primary_only=True)
    assert only.detected == 3 and len(only.faces) == 1


def test_no_face_gives_empty_list(pipeline: FacePipeline) -> None:
    rng = np.random.default_rng(0)
    texture = (rng.random((240, 320, 3)) * 60 + 100).astype(np.uint8)
    (result,) = pipeline.analyze([texture])
    assert result.detected == 0 and result.faces == []


def test_embeddings_are_unit_128d(pipeline: FacePipeline) -> None:
    (result,) = pipeline.analyze([lfw_image("Ann_Veneman_0003")])
    emb = result.faces[0].embedding
    assert emb is not None and emb.shape == (128,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5


def test_int8_agrees_with_fp32(pipeline: FacePipeline, fp32_pipeline: FacePipeline) -> None:
    images = [lfw_image(k) for pair in SAME_PAIRS for k in pair]
    a = np.stack([r.faces[0].embedding for r in pipeline.analyze(images, primary_only=True)])
    b = np.stack([r.faces[0].embedding for r in fp32_pipeline.analyze(images, True)])
    assert ((a * b).sum(axis=1) > 0.97).all()


def test_batched_equals_one_by_one(pipeline: FacePipeline) -> None:
    keys = ["Abel_Pacheco_0001", "Dean_Barker_0001", "Portia_de_Rossi_0001"]
    batched = pipeline.analyze([lfw_image(k) for k in keys])
    for key, res in zip(keys, batched, strict=True):
        (single,) = pipeline.analyze([lfw_image(key)])
        np.testing.assert_allclose(single.faces[0].box, res.faces[0].box, atol=1e-3)
        assert single.faces[0].embedding @ res.faces[0].embedding > 0.99999


def test_box_alignment_also_verifies() -> None:
    box = FacePipeline.local(PipelineConfig(alignment="box"))
    for a, b in SAME_PAIRS[:3]:
        assert similarity(box, a, b) >= box.threshold


def test_similarity_warp_puts_landmarks_on_template(pipeline: FacePipeline) -> None:
    image = lfw_image("Akhmed_Zakayev_0001")
    (det,) = pipeline.detect([image])
    template = np.asarray(pipeline.card.template)
    m = similarity_transform(det.landmarks[0], template)
    mapped = det.landmarks[0] @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - template).max() < 6.0  # a face is not exactly the mean face
    crops = align_faces(image, det, "similarity", pipeline.card.template, 32, 160)
    assert crops.shape == (1, 160, 160, 3) and crops.dtype == np.uint8


def test_gallery_identifies_and_rejects_strangers(pipeline: FacePipeline) -> None:
    cfg = pipeline.config
    policy = IdentificationPolicy.from_card(pipeline.card, cfg.alignment, cfg.flip, cfg.precision)
    gallery = Gallery(128, policy.scoring)
    enrol = ["Abel_Pacheco_0001", "Akhmed_Zakayev_0001", "Amber_Tamblyn_0001"]
    for key, res in zip(enrol, pipeline.analyze([lfw_image(k) for k in enrol], True), strict=True):
        assert res.faces[0].embedding is not None
        gallery.add(key.rsplit("_", 1)[0], res.faces[0].embedding[None])
    probes = ["Abel_Pacheco_0004", "Akhmed_Zakayev_0003", "Amber_Tamblyn_0002", "Dean_Barker_0001"]
    results = pipeline.analyze([lfw_image(k) for k in probes], True)
    emb = np.stack([r.faces[0].embedding for r in results])
    decisions = policy.identify(gallery, emb, top=3, fpir=1e-3)
    matches = [d.match.subject_id if d.match else None for d in decisions]
    assert matches == ["Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn", None]
    assert decisions[0].point.gallery_size == 3 and decisions[0].point.fpir == 1e-3


def test_huge_photo_is_searched_downscaled_but_reported_full_size(
    pipeline: FacePipeline,
) -> None:
    import cv2

    face = lfw_image("Angela_Bassett_0001", pad=0)
    big = np.full((3000, 4000, 3), 90, np.uint8)
    big[1000:2200, 1500:2700] = cv2.resize(face, (1200, 1200), interpolation=cv2.INTER_CUBIC)
    (result,) = pipeline.analyze([big])
    assert result.detected == 1
    x1, y1, x2, y2 = result.faces[0].box
    assert 1400 < x1 < 1800 and 2300 < x2 < 2800 and 900 < y1 < 1300 and y2 < 2300
    (small,) = pipeline.analyze([cv2.resize(big, (400, 300), interpolation=cv2.INTER_AREA)])
    a, b = result.faces[0].embedding, small.faces[0].embedding
    assert a is not None and b is not None and float(a @ b) > 0.8
