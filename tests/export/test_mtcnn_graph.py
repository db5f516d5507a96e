"""The ONNX Runtime rewrite of the MTCNN graphs computes what the PyTorch networks do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from export.mtcnn_graph import CHANNEL_BLOCK, GraphRewriteError, optimise_mtcnn  # noqa: E402
from export.mtcnn_weights import load_mtcnn  # noqa: E402
from facerec.models import facerec_home, model_path  # noqa: E402
from training.onnx_export import export_onnx  # noqa: E402


@pytest.mark.parametrize("net", ["pnet", "rnet", "onet"])
def test_exported_graphs_have_no_prelu_and_keep_outputs(net: str) -> None:
    graph = onnx.load(str(model_path(net))).graph
    ops = {n.op_type for n in graph.node}
    assert "PRelu" not in ops and "BatchNormalization" in ops
    assert [o.name for o in graph.output][-1] == "prob"
    # every pooled feature map has whole blocks of channels (P-Net 10 -> 16, R-Net 28 -> 32)
    weights = {t.name: t.dims for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(weights[c.input[1]][0] % CHANNEL_BLOCK == 0 for c in convs[:2])


@pytest.mark.parametrize(
    ("index", "shape"), [(0, (2, 3, 37, 51)), (1, (5, 3, 24, 24)), (2, (3, 3, 48, 48))]
)
def test_rewritten_graph_matches_pytorch(
    tmp_path: Path, index: int, shape: tuple[int, ...]
) -> None:
    w = facerec_home() / "weights"
    module = load_mtcnn(w / "pnet.pt", w / "rnet.pt", w / "onet.pt")[index].eval()
    x = torch.from_numpy(np.random.default_rng(index).uniform(-1, 1, shape).astype(np.float32))
    with torch.no_grad():
        expected = [t.numpy() for t in module(x)]
    names = ["reg", "landmarks", "prob"] if index == 2 else ["reg", "prob"]
    axes = {n: {0: "batch"} for n in ["image", *names]}
    if index == 0:
        axes = {n: {0: "batch", 2: "h", 3: "w"} for n in ["image", *names]}
    path = export_onnx(module, tmp_path / "net.onnx", x, "image", names, axes, None, optimise_mtcnn)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-5


def test_rewrite_refuses_a_graph_without_prelu() -> None:
    graph = onnx.load(str(model_path("pnet")))
    with pytest.raises(GraphRewriteError):
        optimise_mtcnn(graph)
