"""The committed model_repository configs against the exported graphs and each other:
names, shapes and dtypes of every model, the ensemble's wiring, and the generator."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

from facerec.models import load_model_card, model_path
from facerec.triton.repository import TARGETS, source_dir, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
}


def load_configs(target: str) -> dict[str, object]:
    configs = {}
    for path in sorted(source_dir(target).glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        configs[config.name] = config
    return configs


def dtype_name(config_tensor: object) -> str:
    return str(model_config_pb2.DataType.Name(config_tensor.data_type))  # type: ignore[attr-defined]


def full_dims(config: object, tensor: object) -> list[int]:
    """Dims as the graph sees them: with the batch axis when the model batches."""
    dims = list(tensor.dims)  # type: ignore[attr-defined]
    return [-1, *dims] if config.max_batch_size > 0 else dims  # type: ignore[attr-defined]


def graph_dims(value: onnx.ValueInfoProto) -> list[int]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


@pytest.mark.parametrize("target", TARGETS)
def test_every_config_parses_and_the_ensemble_wires_up(target: str) -> None:
    configs = load_configs(target)
    assert set(configs) == {"detector", "aligner", "embedder", "fuse", "face_pipeline"}
    ensemble = configs.pop("face_pipeline")
    assert ensemble.platform == "ensemble"  # type: ignore[attr-defined]
    # Every tensor flowing through the ensemble: (dtype, dims) as declared where produced.
    tensors = {
        t.name: (dtype_name(t), full_dims(ensemble, t))
        for t in ensemble.input  # type: ignore[attr-defined]
    }
    for step in ensemble.ensemble_scheduling.step:  # type: ignore[attr-defined]
        model = configs[step.model_name]
        inputs = {t.name: t for t in model.input}  # type: ignore[attr-defined]
        outputs = {t.name: t for t in model.output}  # type: ignore[attr-defined]
        assert set(step.input_map) == set(inputs), step.model_name
        for name, tensor in step.input_map.items():
            dtype, dims = tensors[tensor]
            assert dtype == dtype_name(inputs[name]), (step.model_name, name)
            assert len(dims) == len(full_dims(model, inputs[name])), (step.model_name, name)
            for have, want in zip(dims, full_dims(model, inputs[name]), strict=True):
                assert want == -1 or have in (-1, want), (step.model_name, name)
        for name, tensor in step.output_map.items():
            assert name in outputs, (step.model_name, name)
            tensors[tensor] = (dtype_name(outputs[name]), full_dims(model, outputs[name]))
    for out in ensemble.output:  # type: ignore[attr-defined]
        assert tensors[out.name] == (dtype_name(out), full_dims(ensemble, out)), out.name
    assert configs["embedder"].dynamic_batching.max_queue_delay_microseconds > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("target", TARGETS)
def test_embedder_config_matches_its_onnx_graph(target: str) -> None:
    config = load_configs(target)["embedder"]
    precision = config.parameters["precision"].string_value  # type: ignore[attr-defined]
    card = load_model_card()
    graph = onnx.load(str(model_path(f"{card.name}-{precision}-serving"))).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    for declared, actual in (
        (config.input, graph_inputs),  # type: ignore[attr-defined]
        (config.output, list(graph.output)),  # type: ignore[attr-defined]
    ):
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual, strict=True):
            assert dtype_name(t) == ONNX_TO_TRITON[v.type.tensor_type.elem_type]
            assert full_dims(config, t) == graph_dims(v)
    assert config.input[0].dims == [card.input_size, card.input_size, 3]  # type: ignore[attr-defined]
    assert config.output[0].dims == [card.embedding_size]  # type: ignore[attr-defined]


def test_generated_repository_has_every_model_file(tmp_path: Path) -> None:
    names = write_repository("cpu", tmp_path)
    assert names == ["aligner", "detector", "embedder", "face_pipeline", "fuse"]
    assert (tmp_path / "embedder" / "1" / "model.onnx").stat().st_size > 1_000_000
    for net in ("pnet", "rnet", "onet"):
        assert (tmp_path / "detector" / "1" / f"mtcnn-{net}.onnx").is_file()
    for python_model in ("detector", "aligner", "embedder", "fuse"):
        code = (tmp_path / python_model / "1" / "model.py").read_text()
        assert "as TritonPythonModel" in code
    assert (tmp_path / "face_pipeline" / "1").is_dir()
    # Generating again replaces, never mixes, what is there.
    (tmp_path / "embedder" / "1" / "stale.txt").write_text("x")
    write_repository("cpu", tmp_path)
    assert not (tmp_path / "embedder" / "1" / "stale.txt").exists()
