"""The fused model in the benchmarks: the weight search of `facerec bench lfw-openset
--choose-weight` end to end on the bundled faces, and the embedding cache reweighted (not
embedded again) when the card's weights change."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facerec.evaluation.lfw_faces import load_or_embed
from facerec.fusion import FusedEmbedder, FusionSpec, fuse_embeddings, split_embeddings
from facerec.pipeline import FacePipeline, PipelineConfig
from tests.support.cli import run_cli
from tests.support.data import FUSED, GALLERY
from tests.support.data import LFW as LFW_DIR


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled faces as an LFW folder (57 images, 19 people)."""
    root = tmp_path_factory.mktemp("lfw")
    (root / "images").mkdir()
    for photo in [*LFW_DIR.glob("*.jpg"), *GALLERY.glob("*.jpg")]:
        shutil.copy(photo, root / "images")
    return root


def test_choose_weight_reports_on_the_other_half(lfw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args: list[str | Path] = ["bench", "lfw-openset", "--data", lfw, "--out", out, "--model", FUSED]
    _, doc = run_cli(*args, "--choose-weight", "--json", ok=True)
    found = json.loads((out / "fusion.json").read_text())
    assert found["parts"] == ["facenet128", "dlib128"]
    assert [d["calibration_half"] for d in found["directions"]] == [0, 1]
    for d in found["directions"]:
        assert d["evaluation_half"] == 1 - d["calibration_half"]
        assert 0 < d["weight"] < 1 and sum(d["part_weights"]) == pytest.approx(1.0)
        assert [r["w"] for r in d["grid"]] == sorted(r["w"] for r in d["grid"])
        for name in found["parts"]:
            assert d["normalisation"][name]["impostor_std"] > 0
        assert set(d["report"]) == {"100", "1000", "all"}
    assert set(found["pooled"]["1000"]) == {"0.01", "0.001"}
    assert doc["settings"]["model"] == FUSED
    code, refused = run_cli(*args[:-2], "--model", "facenet128", "--choose-weight", "--json")
    assert code == 1 and refused["error"]["code"] == "not_fused"


def test_cache_is_reweighted_not_embedded_again(lfw: Path, tmp_path: Path) -> None:
    pipeline = FacePipeline.local(PipelineConfig(model=FUSED, workers=1))
    cache = tmp_path / "embeddings.npz"
    first = load_or_embed(pipeline, lfw, cache, progress=False)
    spec = FusionSpec.from_dict(pipeline.card.raw["fusion"]).with_weight(0.2)
    weights = spec.part_weights()
    assert isinstance(pipeline.embedder, FusedEmbedder)
    card = replace(pipeline.card, part_weights=weights)
    other = FacePipeline(
        pipeline.detector,
        FusedEmbedder(pipeline.embedder.parts, weights),
        card,
        pipeline.config,
    )
    second = load_or_embed(other, lfw, cache, progress=False)
    # embedded again, the card on disk (another weight) would have made other vectors
    parts = split_embeddings(first.embeddings, [128, 128], pipeline.card.part_weights)
    np.testing.assert_allclose(second.embeddings, fuse_embeddings(parts, weights), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(second.embeddings, axis=1), 1.0, atol=1e-5)
    assert second.keys == first.keys and (second.sharpness == first.sharpness).all()
