"""dlib128 as a model of its own: its card, its serving graphs, its pipeline (needs the
graphs `facerec models` builds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerec.embedding import PREPROCESSORS, OnnxEmbedder
from facerec.models import embedder_key, load_model_card, model_path
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.runtime import create_session
from tests.support.data import LFW, lfw_image

DLIB = "dlib128"
# dlib's chip template (export.dlib_align.MTCNN_TEMPLATE, 150-px chip) as the card holds it
CHIP_TEMPLATE = [
    [47.48, 45.99],
    [102.62, 45.94],
    [75.03, 78.48],
    [50.57, 106.23],
    [99.06, 106.29],
]


@pytest.fixture(scope="module")
def dlib_pipeline() -> FacePipeline:
    return FacePipeline.local(PipelineConfig(model=DLIB, flip=False))


@pytest.fixture(scope="module")
def chips(dlib_pipeline: FacePipeline) -> np.ndarray:
    """The 150x150 chips of every bundled LFW face, and their mirrors."""
    keys = sorted(p.stem for p in LFW.glob("*.jpg"))
    images = [lfw_image(k) for k in keys]
    crops = []
    for image, det in zip(images, dlib_pipeline.detect(images), strict=True):
        crops.append(dlib_pipeline.align(image, det.take([0])))
    both = np.concatenate(crops)
    return np.concatenate([both, both[:, :, ::-1]])


def test_card() -> None:
    card = load_model_card(DLIB)
    assert (card.input_size, card.embedding_size) == (150, 128)
    assert card.preprocessing in PREPROCESSORS
    assert card.identity.startswith("dlib128:55533b28a95800a5")  # the .dat's SHA-256
    # the template in 160-px units, scaled to the 150-px chip as the alignment scales it
    chip = np.asarray(card.template) * 150 / 160
    assert np.abs(chip - np.asarray(CHIP_TEMPLATE)).max() < 1e-4
    assert "CC0" in card.raw["licence"]


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.99999), ("int8", 0.999)])
def test_serving_graph_matches_raw_graph(chips: np.ndarray, precision: str, floor: float) -> None:
    card = load_model_card(DLIB)
    serving = model_path(embedder_key(DLIB, precision))
    raw = model_path(embedder_key(DLIB, precision, serving=False))
    session = create_session(serving)
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [150, 150, 3]
    served = OnnxEmbedder(serving, card).embed(chips)
    reference = OnnxEmbedder(raw, card).embed(chips)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert float((served * reference).sum(axis=1).min()) >= floor


def test_pipeline_verifies_at_its_threshold(dlib_pipeline: FacePipeline) -> None:
    def embedding(key: str) -> np.ndarray:
        (result,) = dlib_pipeline.analyze([lfw_image(key)], primary_only=True)
        e = result.faces[0].embedding
        assert e is not None and e.shape == (128,)
        return e

    same = float(embedding("Amber_Tamblyn_0001") @ embedding("Amber_Tamblyn_0002"))
    different = float(embedding("Amber_Tamblyn_0001") @ embedding("Angela_Bassett_0001"))
    assert same >= dlib_pipeline.threshold > different


def test_models_manifest_records_the_serving_parity() -> None:
    import json

    from facerec.models import models_dir

    part = json.loads((models_dir() / "manifest.json").read_text())["dlib128"]
    assert part["serving"]["fp32"]["cosine_vs_raw_graph_min"] >= 0.99999
    assert part["serving"]["int8"]["cosine_vs_raw_graph_min"] >= 0.999
    assert set(part["serving_outputs"]) == {
        "dlib128-fp32-serving.onnx",
        "dlib128-fp16-serving.onnx",
        "dlib128-int8-serving.onnx",
    }


@pytest.mark.parametrize(
    ("model", "preprocessing", "size", "dim"),
    [("facenet128", "per_image_standardization", 160, 128), (DLIB, "rgb_float", 150, 128)],
)
def test_serving_graph_follows_the_card_preprocessing(
    tmp_path: Path, model: str, preprocessing: str, size: int, dim: int
) -> None:
    """`wrap_embedder` by the card's preprocessing writes the very bytes `facerec models`
    wrote (FaceNet's serving graphs are what they were before dlib128 had one)."""
    pytest.importorskip("onnx")
    from export.serving_graph import wrap_embedder

    assert load_model_card(model).preprocessing == preprocessing
    raw = model_path(embedder_key(model, "int8", serving=False))
    out = wrap_embedder(raw, tmp_path / "served.onnx", size, dim, preprocessing)
    assert out.read_bytes() == model_path(embedder_key(model, "int8")).read_bytes()
