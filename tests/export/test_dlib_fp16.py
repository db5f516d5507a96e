"""dlib128's FP16 graphs (built by `facerec models` as FaceNet's are): their agreement with
FP32 on the bundled LFW faces, the manifest's record of it, and the fused model's GPU
Triton repository, which serves each part's FP16 serving graph."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.setup_models import DLIB_SECTION
from export.steps import FP16_COSINE_MIN, SERVING_COSINE_MIN
from facerec.embedding import OnnxEmbedder
from facerec.models import embedder_file, embedder_key, load_model_card, model_path, models_dir
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.triton.repository import ModelSpec, write_repository
from tests.support.data import FUSED, LFW, lfw_image

DLIB = "dlib128"


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """The 150x150 chips (dlib128's template, as the pipeline aligns) of every bundled LFW
    face and their mirrors: uint8[2N, 150, 150, 3]."""
    pipeline = FacePipeline.local(PipelineConfig(model=DLIB, flip=False))
    images = [lfw_image(p.stem) for p in sorted(LFW.glob("*.jpg"))]
    crops = [
        pipeline.align(image, det.take([0]))
        for image, det in zip(images, pipeline.detect(images), strict=True)
    ]
    both = np.concatenate(crops)
    return np.concatenate([both, both[:, :, ::-1]])


def test_fp16_serving_graph_matches_fp32(chips: np.ndarray) -> None:
    card = load_model_card(DLIB)
    fp16 = model_path(embedder_key(DLIB, "fp16"))
    half = OnnxEmbedder(fp16, card, threads=1).embed(chips)
    full = OnnxEmbedder(model_path(embedder_key(DLIB, "fp32")), card, threads=1).embed(chips)
    assert half.shape == full.shape == (len(chips), card.embedding_size)
    assert (half * full).sum(axis=1).min() >= FP16_COSINE_MIN
    weights = {t.data_type for t in onnx.load(str(fp16)).graph.initializer if t.dims}
    assert onnx.TensorProto.FLOAT16 in weights  # halved, not a copy of FP32


def test_manifest_records_the_fp16_parity() -> None:
    part = json.loads((models_dir() / "manifest.json").read_text())[DLIB_SECTION]
    assert part["fp16"]["cosine_vs_fp32_min"] >= FP16_COSINE_MIN
    assert part["fp16"]["cosine_vs_pytorch_min"] >= FP16_COSINE_MIN
    assert part["serving"]["fp16"]["cosine_vs_raw_graph_min"] >= SERVING_COSINE_MIN["fp16"]
    assert embedder_file(DLIB, "fp16") in part["outputs"]
    assert embedder_file(DLIB, "fp16", serving=True) in part["serving_outputs"]


def test_gpu_repository_serves_each_parts_fp16_graph(tmp_path: Path) -> None:
    card = load_model_card(FUSED)
    names = write_repository("gpu", tmp_path, model=FUSED)
    embedders = {"embedder": card.parts[0], f"embedder_{DLIB}": card.parts[1]}
    assert set(embedders) <= set(names)
    assert [p.name for p in embedders.values()] == ["facenet128", DLIB]
    for embedder, part in embedders.items():
        params = ModelSpec.parse((tmp_path / embedder / "config.pbtxt").read_text()).parameters
        assert params["precision"] == "fp16"
        assert params["model"] == part.name
        graph = model_path(embedder_key(part.name, params["precision"]))
        assert graph.name == embedder_file(part.name, "fp16", serving=True)
        assert filecmp.cmp(tmp_path / embedder / "1" / "model.onnx", graph, shallow=False)
