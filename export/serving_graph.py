"""The embedder as served by Triton: preprocessing and normalisation inside the graph.

``CROPS`` uint8[N, S, S, 3] (aligned RGB faces) go in; ``EMBEDDINGS`` float32[N, D] of
unit length come out. The model card's preprocessing is prepended to the exported network
(:data:`PREPROCESSING`: FaceNet's per-image standardisation, ``(x - mean) / max(std,
1/sqrt(n))`` over all pixels and channels; or the RGB values as float, NCHW, for a network
that normalises inside, such as dlib's) and L2 normalisation appended, so a server needs no
Python around the model (Triton's ``onnxruntime_onnx`` and ``tensorrt_plan`` backends) and
every client sends the same bytes the in-process pipeline embeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "CROPS"
OUTPUT = "EMBEDDINGS"


def _const(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _topological(nodes: list[onnx.NodeProto], given: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` reordered so each comes after the producers of its inputs (the FP16
    converter appends its input casts at the end of the node list)."""
    ready = set(given) | {INPUT, ""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return ordered


Nodes = tuple[list[onnx.NodeProto], list[TensorProto]]


def _standardise(p: str, out: str, input_size: int) -> Nodes:
    """Per-image standardisation of ``p + "x"`` (float NCHW) into ``out``."""
    nodes = [
        helper.make_node("ReduceMean", [p + "x"], [p + "mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", [p + "x", p + "mean"], [p + "d"]),
        helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
        helper.make_node("ReduceMean", [p + "d2"], [p + "var"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sqrt", [p + "var"], [p + "std"]),
        helper.make_node("Max", [p + "std", p + "floor"], [p + "std_floor"]),
        helper.make_node("Div", [p + "d", p + "std_floor"], [out]),
    ]
    return nodes, [_const(p + "floor", 1.0 / math.sqrt(3 * input_size * input_size))]


def _rgb_float(p: str, out: str, input_size: int) -> Nodes:
    """The float NCHW crop ``p + "x"`` as it is (``out`` is its name)."""
    return [helper.make_node("Identity", [p + "x"], [out])], []


PREPROCESSING = {"per_image_standardization": _standardise, "rgb_float": _rgb_float}
"""A model card's ``preprocessing`` -> the graph nodes (and constants) that compute it from
the float NCHW crop; the same as :data:`facerec.embedding.PREPROCESSORS` in numpy."""


def wrap_embedder(
    raw: Path,
    out: Path,
    input_size: int,
    embedding_size: int,
    preprocessing: str = "per_image_standardization",
) -> Path:
    """Write the serving graph of the raw embedder ``raw`` (input ``image`` float32 NCHW,
    preprocessed as ``preprocessing`` names, see :data:`PREPROCESSING`; output
    ``embedding``) to ``out``; returns ``out``."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"no serving graph for preprocessing {preprocessing!r}")
    model = onnx.load(str(raw))
    graph = model.graph
    (old_in,) = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    (old_out,) = [o.name for o in graph.output]
    p = "serving_"
    steps, constants = PREPROCESSING[preprocessing](p, old_in, input_size)
    pre = [
        helper.make_node("Cast", [INPUT], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [p + "f"], [p + "x"], perm=[0, 3, 1, 2]),
        *steps,
    ]
    post = [
        helper.make_node("ReduceL2", [old_out], [p + "norm"], axes=[1], keepdims=1),
        helper.make_node("Max", [p + "norm", p + "eps"], [p + "norm_eps"]),
        helper.make_node("Div", [old_out, p + "norm_eps"], [OUTPUT]),
    ]
    graph.initializer.extend([*constants, _const(p + "eps", 1e-12)])
    nodes = _topological([*pre, *graph.node, *post], {i.name for i in graph.initializer})
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name != old_in]
    del graph.input[:]
    graph.input.extend(
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.UINT8, ["batch", input_size, input_size, 3]
            ),
            *kept_inputs,
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", embedding_size])]
    )
    onnx.checker.check_model(model)
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out
