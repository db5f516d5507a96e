"""The fused model (``facenet128+dlib128``) on the real tritonserver: the generated
repository's two embedder branches, the Triton backend and the ensemble against the
in-process fused pipeline, and the refusals between single-model and fused servers."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from facerec.models import BASE_MODEL, embedder_key, load_model_card, model_path
from facerec.pipeline import FacePipeline, ImageFaces, PipelineConfig
from facerec.triton.client import TritonConnection
from facerec.triton.repository import ModelSpec, source_dir, write_repository
from facerec.triton.server import TritonServer
from tests.support.data import FUSED

pytestmark = pytest.mark.integration

COSINE_MIN = 0.999


@pytest.fixture(scope="module")
def expected(fused: FacePipeline, images: list[np.ndarray]) -> list[ImageFaces]:
    return fused.analyze(images)


def _agree(boxes: np.ndarray, emb: np.ndarray, ref: ImageFaces) -> None:
    """The same faces as ``ref`` with fused unit embeddings close to its."""
    assert len(boxes) == len(ref.faces)
    assert emb.shape == (len(ref.faces), 256)
    if not ref.faces:
        return
    np.testing.assert_allclose(boxes, np.stack([f.box for f in ref.faces]), atol=1e-3)
    want = np.stack([f.embedding for f in ref.faces if f.embedding is not None])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (emb * want).sum(axis=1).min() >= COSINE_MIN


def test_repository_has_an_embedder_per_part_with_its_graph(tmp_path: Path) -> None:
    card = load_model_card(FUSED)
    names = write_repository("cpu", tmp_path, model=FUSED)
    assert names == [
        "aligner",
        "aligner_dlib128",
        "detector",
        "embedder",
        "embedder_dlib128",
        "face_pipeline",
        "fuse",
    ]
    for embedder, aligner, part in (
        ("embedder", "aligner", card.parts[0]),
        ("embedder_dlib128", "aligner_dlib128", card.parts[1]),
    ):
        text = (tmp_path / embedder / "config.pbtxt").read_text()
        params = ModelSpec.parse(text).parameters
        assert params["model"] == part.name
        assert params["weights_sha256"] == part.weights_sha256
        assert params["fused_model"] == FUSED
        assert params["fused_weights_sha256"] == card.weights_sha256
        graph = model_path(embedder_key(part.name, params["precision"]))
        assert filecmp.cmp(tmp_path / embedder / "1" / "model.onnx", graph, shallow=False)
        s = part.input_size
        assert f"dims: [ {s}, {s}, 3 ]" in text
        aligner_text = (tmp_path / aligner / "config.pbtxt").read_text()
        assert ModelSpec.parse(aligner_text).parameters["model_card"] == part.name
        assert f"dims: [ -1, {s}, {s}, 3 ]" in aligner_text
    assert {p.input_size for p in card.parts} == {160, 150}
    fuse = ModelSpec.parse((tmp_path / "fuse" / "config.pbtxt").read_text()).parameters
    assert fuse["python_class"] == "FuseParts"
    assert [float(w) for w in fuse["part_weights"].split(",")] == list(card.part_weights)
    ensemble = (tmp_path / "face_pipeline" / "config.pbtxt").read_text()
    assert ModelSpec.parse(ensemble).parameters["model"] == FUSED
    assert 'model_name: "embedder_dlib128"' in ensemble
    assert "dims: [ -1, 256 ]" in ensemble


def test_single_model_repository_is_the_committed_configs(tmp_path: Path) -> None:
    """Fused generation leaves the single model's repository as it was: the committed
    configs, the embedder's with only the two parameters naming its model."""
    write_repository("cpu", tmp_path, model=FUSED)  # a fused repository first, replaced
    names = write_repository("cpu", tmp_path)
    card = load_model_card(BASE_MODEL)
    for name in names:
        committed = (source_dir("cpu") / name / "config.pbtxt").read_text()
        if name == "embedder":
            committed = (
                committed.rstrip("\n")
                + f'\nparameters {{ key: "model" value {{ string_value: "{card.name}" }} }}'
                + f'\nparameters {{ key: "weights_sha256" value {{ string_value: '
                f'"{card.weights_sha256}" }} }}\n'
            )
        assert (tmp_path / name / "config.pbtxt").read_text() == committed, name


def test_fused_triton_pipeline_matches_local(
    fused_server: TritonServer,
    fused: FacePipeline,
    images: list[np.ndarray],
    expected: list[ImageFaces],
) -> None:
    assert [len(e.faces) for e in expected] == [1, 1, 2, 3, 0]
    remote = FacePipeline.open(
        PipelineConfig(model=FUSED), backend="triton", url=fused_server.grpc_url
    )
    assert remote.model_id == fused.model_id
    assert remote.embedder.embedding_size == 256
    assert remote.config.precision == fused.config.precision
    assert remote.threshold == fused.threshold
    for got, ref in zip(remote.analyze(images), expected, strict=True):
        assert got.detected == ref.detected
        _agree(
            np.array([f.box for f in got.faces]).reshape(-1, 4),
            np.array([f.embedding for f in got.faces]).reshape(-1, 256),
            ref,
        )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_gives_the_fused_embeddings(
    fused_server: TritonServer,
    images: list[np.ndarray],
    expected: list[ImageFaces],
    protocol: str,
) -> None:
    connection = TritonConnection(fused_server.url(protocol), protocol)
    params = connection.model_config("face_pipeline")["parameters"]
    assert params["model"]["string_value"] == FUSED
    for image, ref in zip(images, expected, strict=True):
        boxes, emb = connection.infer("face_pipeline", {"IMAGE": image}, ("BOXES", "EMBEDDINGS"))
        _agree(boxes, emb, ref)


def test_fused_server_refuses_a_single_model_config(fused_server: TritonServer) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        FacePipeline.open(backend="triton", url=fused_server.grpc_url)
    assert err.value.code == "model_mismatch"
    assert FUSED in str(err.value)


def test_single_model_server_refuses_a_fused_config(triton_server: TritonServer) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        FacePipeline.open(PipelineConfig(model=FUSED), backend="triton", url=triton_server.grpc_url)
    assert err.value.code == "model_mismatch"
    assert f"serves model {BASE_MODEL!r}" in str(err.value)
