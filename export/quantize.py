"""INT8 static quantisation of the embedder, calibrated on real face crops.

Two layers stay in float: the first convolution (3 input channels: cheap, and its input is
the whole dynamic range of the standardised image) and the last projection to the
embedding (its error goes straight into the 128 numbers compared). With every layer
quantised, LFW accuracy moved by 0.07 pt when the 200 calibration crops moved by a pixel
or so (99.40 % to 99.33 %, FP32 99.45 %); with these two in float it measured 99.42 %, and
99.40 % recalibrated after the next detector change (minimum cosine with FP32 0.9978-0.9980
vs 0.9976), at no measured cost in speed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)


class _CropReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds prewhitened crops float32[N, 3, S, S] in batches of ``batch``."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


# Element-wise input scaling a graph may do before its first convolution (dlib's network
# subtracts its channel means and divides by 256 inside the graph).
_INPUT_SCALING = ("Sub", "Div", "Mul", "Add")


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes kept in float: the convolution reading the graph input (directly
    or through element-wise input scaling, which stays in float too) and the last matrix
    product (the projection to the embedding)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    constants = initializers | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    reached = {i.name for i in graph.input} - initializers
    scaling: list[str] = []
    for node in graph.node:  # topological order
        fed = [i for i in node.input if i in reached]
        if (
            node.op_type in _INPUT_SCALING
            and fed
            and all(i in reached or i in constants for i in node.input)
        ):
            reached.update(node.output)
            scaling.append(node.name)
    first = [n for n in graph.node if n.op_type == "Conv" and n.input[0] in reached]
    last = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")][-1:]
    if len(first) != 1 or len(last) != 1:
        raise ValueError("embedder graph: expected one input convolution and a final MatMul")
    return [first[0].name, last[0].name, *scaling]


def quantize_embedder(
    fp32: Path, out: Path, calibration: np.ndarray, input_name: str
) -> tuple[Path, list[str]]:
    """Write an INT8 QDQ model (per-channel weights, unsigned activations) to ``out``;
    returns it and the names of the nodes left in float (:func:`float_nodes`).

    ``calibration``: prewhitened face crops float32[N, 3, S, S].
    """
    prepared = out.with_suffix(".prep.onnx")
    tmp = out.with_suffix(".tmp.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    keep_float = float_nodes(onnx.load(str(prepared)))
    batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
    log.info("calibrating INT8 on %d crops", len(calibration))
    quantize_static(
        str(prepared),
        str(tmp),
        _CropReader(input_name, batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=keep_float,
    )
    prepared.unlink(missing_ok=True)
    tmp.replace(out)
    return out, keep_float
