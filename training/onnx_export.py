"""Export a PyTorch module to ONNX with named tensors and dynamic axes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17


def export_onnx(
    module: nn.Module,
    path: Path,
    example: torch.Tensor,
    input_name: str,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, str] | None = None,
    transform: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
) -> Path:
    """Trace ``module`` on ``example`` and write an ONNX graph to ``path``.

    The file is written next to its final place and renamed, so a crash never leaves a
    half-written model behind. ``metadata`` lands in the graph's ``metadata_props``;
    ``transform``, when given, rewrites the exported graph before it is checked and saved.
    """
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    if transform is not None:
        model = transform(model)
    onnx.checker.check_model(model)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
