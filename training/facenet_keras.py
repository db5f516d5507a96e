"""Convert the published Keras FaceNet (``facenet_keras.h5``) into :class:`InceptionResnetV1`.

The source is the Keras 2.1.2 / TensorFlow-backend port of davidsandberg's 20170512-110547
Inception-ResNet-v1 (128-d). It is read with h5py only: no TensorFlow, no Keras.

File layout (what this module relies on and checks):

* root attribute ``model_config``: JSON of the functional model, 426 layers;
* group ``model_weights/<layer>/<layer>/<weight>:0``: 490 float32 arrays, 22,808,144 values;
* conv kernels are HWIO ``[kh, kw, in, out]`` (PyTorch wants OIHW); only the 21 residual
  1x1 up-projections (``Block*_Conv2d_1x1``) have a bias;
* every batch norm is ``center=True, scale=False`` (``beta``, ``moving_mean``,
  ``moving_variance``; gamma is implicitly 1), epsilon 0.001;
* the bottleneck ``Dense`` kernel is ``[1792, 128]`` (``[in, out]``), without bias;
* residual scales live in the ``Lambda`` layers' ``arguments``.

Every array in the file is used exactly once and every parameter and buffer of the module is
filled exactly once (from the file, or with a documented constant: BN gamma = 1,
``num_batches_tracked`` = 0). Any deviation raises :class:`ConversionError`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from training.errors import ConversionError
from training.inception_resnet_v1 import (
    BN_EPS,
    BasicConv2d,
    Block8,
    Block17,
    Block35,
    InceptionResnetV1,
)

logger = logging.getLogger(__name__)

__all__ = ["ConversionError", "ConversionReport", "convert_facenet_keras", "load_facenet_keras"]

EXPECTED_KERAS_VERSION = "2.1.2"
INPUT_SHAPE = [None, 160, 160, 3]
FEATURE_DIM = 1792

# Body of the Python 3 bytecode that every ``*_ScaleSum`` Lambda carries (base64 + marshal in
# the config): ``lambda inputs, scale: inputs[0] + inputs[1] * scale``, i.e.
# LOAD_FAST inputs; LOAD_CONST 0; BINARY_SUBSCR; LOAD_FAST inputs; LOAD_CONST 1;
# BINARY_SUBSCR; LOAD_FAST scale; BINARY_MULTIPLY; BINARY_ADD; RETURN_VALUE.
_SCALE_SUM_BYTECODE = b"|\x00d\x01\x19\x00|\x00d\x02\x19\x00|\x01\x14\x00\x17\x00S\x00"

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion consumed and produced.

    ``arrays_used``/``values_used`` count h5 arrays and their elements (all of them, each
    once); ``tensors_from_file`` counts module tensors filled from those arrays;
    ``tensors_constant`` counts tensors set to a constant (BN gamma, ``num_batches_tracked``);
    ``layers_checked`` counts ``model_config`` layers matched against the module.
    """

    arrays_used: int
    values_used: int
    tensors_from_file: int
    tensors_constant: int
    layers_checked: int
    keras_version: str


# --------------------------------------------------------------------------- h5 side


class _WeightStore:
    """All arrays under ``model_weights``; each may be taken once."""

    def __init__(self, group: h5py.Group) -> None:
        self._arrays: dict[str, h5py.Dataset] = {}
        for layer in group:
            layer_group = group[layer]
            stored = _datasets(layer_group)
            listed = {_decode(n) for n in layer_group.attrs.get("weight_names", [])}
            if listed != set(stored):
                raise ConversionError(
                    f"layer group '{layer}': weight_names attribute {sorted(listed)} does not "
                    f"match the arrays stored in it {sorted(stored)}"
                )
            self._arrays.update({f"{layer}/{name}": data for name, data in stored.items()})
        self.total_arrays = len(self._arrays)
        self.total_values = sum(int(d.size) for d in self._arrays.values())
        self._taken: set[str] = set()

    def take(self, layer: str, weight: str) -> Float32Array:
        """Return ``model_weights/<layer>/<layer>/<weight>:0`` as float32 and mark it used."""
        key = f"{layer}/{layer}/{weight}:0"
        if key in self._taken:
            raise ConversionError(f"array '{key}' used twice")
        dataset = self._arrays.get(key)
        if dataset is None:
            raise ConversionError(f"array '{key}' missing from the h5 file")
        if dataset.dtype != np.float32:
            raise ConversionError(f"array '{key}' has dtype {dataset.dtype}, expected float32")
        array: Float32Array = np.asarray(dataset[()], dtype=np.float32)
        if not np.isfinite(array).all():
            raise ConversionError(f"array '{key}' contains NaN or Inf")
        self._taken.add(key)
        return array

    def check_all_used(self) -> None:
        unused = sorted(set(self._arrays) - self._taken)
        if unused:
            shown = ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else "")
            raise ConversionError(f"{len(unused)} array(s) in the h5 file left unused: {shown}")


class _KerasConfig:
    """The layers of ``model_config``, checked off one by one."""

    def __init__(self, raw: str | bytes) -> None:
        try:
            config = json.loads(raw)
            layers: list[dict[str, Any]] = config["config"]["layers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConversionError(f"model_config is not a Keras functional model: {exc}") from exc
        self._layers = {str(layer["name"]): layer for layer in layers}
        self._visited: set[str] = set()

    def layer(self, name: str, class_name: str) -> dict[str, Any]:
        """The ``config`` dict of layer ``name``; it must be a ``class_name``."""
        layer = self._layers.get(name)
        if layer is None:
            raise ConversionError(f"layer '{name}' missing from model_config")
        if layer["class_name"] != class_name:
            raise ConversionError(
                f"layer '{name}' is a {layer['class_name']}, expected {class_name}"
            )
        if name in self._visited:
            raise ConversionError(f"layer '{name}' mapped twice")
        self._visited.add(name)
        config: dict[str, Any] = layer["config"]
        return config

    def inbound(self, name: str) -> list[str]:
        """Names of the layers feeding ``name`` (first call of the layer)."""
        nodes = self._layers[name]["inbound_nodes"]
        return [str(node[0]) for node in nodes[0]] if nodes else []

    @property
    def names(self) -> list[str]:
        return list(self._layers)

    def check_all_visited(self) -> int:
        unvisited = [name for name in self._layers if name not in self._visited]
        if unvisited:
            raise ConversionError(
                f"{len(unvisited)} layer(s) in model_config have no counterpart in the "
                f"module: {', '.join(unvisited[:10])}"
            )
        return len(self._visited)


def _datasets(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """All datasets below ``group``, keyed by their path relative to it."""
    found: dict[str, h5py.Dataset] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            found[key] = item
        else:
            found.update({f"{key}/{name}": data for name, data in _datasets(item).items()})
    return found


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


# --------------------------------------------------------------------------- torch side


class _Targets:
    """Every parameter and buffer of the module; each must be filled exactly once."""

    def __init__(self, module: nn.Module) -> None:
        named = [*module.named_parameters(), *module.named_buffers()]
        self._names = {id(tensor): name for name, tensor in named}
        self._filled: set[str] = set()
        self.from_file = 0
        self.constant = 0

    def fill(self, target: torch.Tensor, value: Float32Array, source: str) -> None:
        """Copy ``value`` (already in PyTorch layout) into ``target``."""
        name = self._claim(target)
        if tuple(value.shape) != tuple(target.shape):
            raise ConversionError(
                f"array '{source}' has shape {tuple(value.shape)} after layout conversion, "
                f"but '{name}' needs {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        self.from_file += 1

    def constant_fill(self, target: torch.Tensor, value: float) -> None:
        self._claim(target)
        with torch.no_grad():
            target.fill_(value)
        self.constant += 1

    def _claim(self, target: torch.Tensor) -> str:
        name = self._names.get(id(target))
        if name is None:
            raise ConversionError("internal: target tensor is not part of the module")
        if name in self._filled:
            raise ConversionError(f"'{name}' filled twice")
        self._filled.add(name)
        return name

    def check_all_filled(self) -> None:
        missing = sorted(set(self._names.values()) - self._filled)
        if missing:
            raise ConversionError(f"{len(missing)} module tensor(s) not filled: {missing[:10]}")


# --------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class _ResidualBlock:
    """One residual block and the Keras names of its branch convolutions."""

    prefix: str  # e.g. "Block35_3"
    block: Block35 | Block17 | Block8
    branch_names: Sequence[Sequence[str]]  # per branch, without the prefix

    @property
    def branches(self) -> tuple[nn.Module, ...]:
        if isinstance(self.block, Block35):
            return (self.block.branch0, self.block.branch1, self.block.branch2)
        return (self.block.branch0, self.block.branch1)

    @property
    def final_relu(self) -> bool:
        return not isinstance(self.block, Block8) or self.block.activate


_BLOCK35_BRANCHES = (
    ("Branch_0_Conv2d_1x1",),
    ("Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_3x3"),
    ("Branch_2_Conv2d_0a_1x1", "Branch_2_Conv2d_0b_3x3", "Branch_2_Conv2d_0c_3x3"),
)
_BLOCK17_BRANCHES = (
    ("Branch_0_Conv2d_1x1",),
    ("Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x7", "Branch_1_Conv2d_0c_7x1"),
)
_BLOCK8_BRANCHES = (
    ("Branch_0_Conv2d_1x1",),
    ("Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_1x3", "Branch_1_Conv2d_0c_3x1"),
)
_MIXED_6A_BRANCHES = (
    ("Branch_0_Conv2d_1a_3x3",),
    ("Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_0b_3x3", "Branch_1_Conv2d_1a_3x3"),
)
_MIXED_7A_BRANCHES = (
    ("Branch_0_Conv2d_0a_1x1", "Branch_0_Conv2d_1a_3x3"),
    ("Branch_1_Conv2d_0a_1x1", "Branch_1_Conv2d_1a_3x3"),
    ("Branch_2_Conv2d_0a_1x1", "Branch_2_Conv2d_0b_3x3", "Branch_2_Conv2d_1a_3x3"),
)
_MAX_POOLS = (
    "MaxPool_3a_3x3",
    "Mixed_6a_Branch_2_MaxPool_1a_3x3",
    "Mixed_7a_Branch_3_MaxPool_1a_3x3",
)


def _residual_blocks(model: InceptionResnetV1) -> list[_ResidualBlock]:
    """The 21 residual blocks with their Keras prefixes (``Block35_1`` ... ``Block8_6``)."""
    stages: tuple[tuple[str, nn.Sequential, Sequence[Sequence[str]]], ...] = (
        ("Block35", model.block35, _BLOCK35_BRANCHES),
        ("Block17", model.block17, _BLOCK17_BRANCHES),
        ("Block8", model.block8, _BLOCK8_BRANCHES),
    )
    blocks: list[_ResidualBlock] = []
    for stage, sequence, branch_names in stages:
        for index, block in enumerate(sequence, start=1):
            if type(block).__name__ != stage or not isinstance(block, Block35 | Block17 | Block8):
                raise ConversionError(f"internal: {stage}_{index} is a {type(block).__name__}")
            blocks.append(_ResidualBlock(f"{stage}_{index}", block, branch_names))
    return blocks


def _named_branch_convs(
    prefix: str, branches: Sequence[nn.Module], names: Sequence[Sequence[str]]
) -> Iterator[tuple[str, BasicConv2d]]:
    """Pair Keras conv names (``<prefix>_<name>``) with the branches' BasicConv2d layers."""
    for branch, branch_names in zip(branches, names, strict=True):
        convs = list(branch) if isinstance(branch, nn.Sequential) else [branch]
        if len(convs) != len(branch_names):
            raise ConversionError(f"internal: {prefix} branch has {len(convs)} layers")
        for name, conv in zip(branch_names, convs, strict=True):
            if not isinstance(conv, BasicConv2d):
                raise ConversionError(f"internal: {prefix}_{name} is a {type(conv).__name__}")
            yield f"{prefix}_{name}", conv


def _all_basic_convs(model: InceptionResnetV1) -> list[tuple[str, BasicConv2d]]:
    """Every (Keras conv layer name, BasicConv2d) pair of the model (111 of them)."""
    pairs: list[tuple[str, BasicConv2d]] = [
        ("Conv2d_1a_3x3", model.conv2d_1a),
        ("Conv2d_2a_3x3", model.conv2d_2a),
        ("Conv2d_2b_3x3", model.conv2d_2b),
        ("Conv2d_3b_1x1", model.conv2d_3b),
        ("Conv2d_4a_3x3", model.conv2d_4a),
        ("Conv2d_4b_3x3", model.conv2d_4b),
    ]
    mixed_6a, mixed_7a = model.mixed_6a, model.mixed_7a
    groups: list[tuple[str, Sequence[nn.Module], Sequence[Sequence[str]]]] = [
        ("Mixed_6a", (mixed_6a.branch0, mixed_6a.branch1), _MIXED_6A_BRANCHES),
        ("Mixed_7a", (mixed_7a.branch0, mixed_7a.branch1, mixed_7a.branch2), _MIXED_7A_BRANCHES),
    ]
    groups += [(r.prefix, r.branches, r.branch_names) for r in _residual_blocks(model)]
    for prefix, branches, names in groups:
        pairs.extend(_named_branch_convs(prefix, branches, names))
    return pairs


# --------------------------------------------------------------------------- checks + copies


def _same_padding(kernel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


def _load_conv(
    config: _KerasConfig,
    store: _WeightStore,
    targets: _Targets,
    name: str,
    conv: nn.Conv2d,
) -> None:
    """Check Conv2D ``name`` against ``conv``; copy its HWIO kernel (and bias) as OIHW."""
    cfg = config.layer(name, "Conv2D")
    kernel_size = tuple(int(k) for k in conv.kernel_size)
    stride = tuple(int(s) for s in conv.stride)
    _expect(cfg["data_format"] == "channels_last", f"{name}: data_format {cfg['data_format']}")
    _expect(tuple(cfg["kernel_size"]) == kernel_size, f"{name}: kernel {cfg['kernel_size']}")
    _expect(tuple(cfg["strides"]) == stride, f"{name}: strides {cfg['strides']}")
    _expect(tuple(cfg["dilation_rate"]) == (1, 1), f"{name}: dilation {cfg['dilation_rate']}")
    _expect(cfg["activation"] == "linear", f"{name}: activation {cfg['activation']}")
    _expect(cfg["filters"] == conv.out_channels, f"{name}: {cfg['filters']} filters")
    _expect(
        cfg["use_bias"] == (conv.bias is not None),
        f"{name}: use_bias={cfg['use_bias']} but the module conv has bias={conv.bias is not None}",
    )
    if cfg["padding"] == "valid":
        expected_padding: tuple[int, ...] = (0, 0)
    elif cfg["padding"] == "same":
        # TF "same" equals symmetric k // 2 padding only for stride 1 and odd kernels.
        _expect(
            stride == (1, 1) and all(k % 2 == 1 for k in kernel_size),
            f"{name}: 'same' padding with stride {stride} and kernel {kernel_size} is not "
            "symmetric",
        )
        expected_padding = _same_padding(kernel_size)
    else:
        raise ConversionError(f"{name}: unsupported padding {cfg['padding']!r}")
    _expect(
        tuple(conv.padding) == expected_padding,
        f"{name}: Keras padding {cfg['padding']!r} needs {expected_padding}, module has "
        f"{conv.padding}",
    )

    kernel = store.take(name, "kernel")
    out_c, in_c, kh, kw = conv.weight.shape
    if kernel.shape != (kh, kw, in_c, out_c):
        raise ConversionError(
            f"array '{name}/kernel:0' has shape {kernel.shape}, expected HWIO "
            f"{(kh, kw, in_c, out_c)}"
        )
    targets.fill(conv.weight, kernel.transpose(3, 2, 0, 1), f"{name}/kernel:0")
    if conv.bias is not None:
        targets.fill(conv.bias, store.take(name, "bias"), f"{name}/bias:0")


def _load_batch_norm(
    config: _KerasConfig,
    store: _WeightStore,
    targets: _Targets,
    name: str,
    bn: nn.BatchNorm1d | nn.BatchNorm2d,
) -> None:
    """Check BatchNormalization ``name`` (centre only, eps 0.001) and copy it into ``bn``."""
    cfg = config.layer(name, "BatchNormalization")
    _expect(cfg["scale"] is False, f"{name}: scale={cfg['scale']}, expected False (no gamma)")
    _expect(cfg["center"] is True, f"{name}: center={cfg['center']}, expected True")
    _expect(cfg["axis"] in (3, -1), f"{name}: axis {cfg['axis']} is not the channel axis")
    _expect(
        math.isclose(float(cfg["epsilon"]), BN_EPS) and math.isclose(bn.eps, BN_EPS),
        f"{name}: epsilon {cfg['epsilon']} (file) / {bn.eps} (module), expected {BN_EPS}",
    )
    _expect(bn.weight is not None and bn.bias is not None, f"{name}: module BN is not affine")
    _expect(
        bn.running_mean is not None and bn.running_var is not None,
        f"{name}: module BN does not track running statistics",
    )
    assert bn.weight is not None and bn.bias is not None
    assert bn.running_mean is not None and bn.running_var is not None
    assert bn.num_batches_tracked is not None

    variance = store.take(name, "moving_variance")
    if (variance <= 0).any():
        raise ConversionError(f"array '{name}/moving_variance:0' has non-positive entries")
    targets.fill(bn.bias, store.take(name, "beta"), f"{name}/beta:0")
    targets.fill(bn.running_mean, store.take(name, "moving_mean"), f"{name}/moving_mean:0")
    targets.fill(bn.running_var, variance, f"{name}/moving_variance:0")
    targets.constant_fill(bn.weight, 1.0)  # scale=False: gamma is 1
    targets.constant_fill(bn.num_batches_tracked, 0)


def _check_activation(config: _KerasConfig, name: str) -> None:
    cfg = config.layer(name, "Activation")
    _expect(cfg["activation"] == "relu", f"{name}: activation {cfg['activation']}")


def _check_max_pool(config: _KerasConfig, name: str) -> None:
    cfg = config.layer(name, "MaxPooling2D")
    _expect(
        tuple(cfg["pool_size"]) == (3, 3)
        and tuple(cfg["strides"]) == (2, 2)
        and cfg["padding"] == "valid",
        f"{name}: pool {cfg['pool_size']} stride {cfg['strides']} {cfg['padding']}, "
        "expected 3x3 stride 2 valid",
    )


def _check_concatenate(config: _KerasConfig, name: str, branches: int) -> None:
    """The concatenation must take branch 0, 1, ... in that order (channel order matters)."""
    cfg = config.layer(name, "Concatenate")
    _expect(cfg["axis"] in (3, -1), f"{name}: concatenation axis {cfg['axis']}")
    inputs = config.inbound(name)
    order = [next((i for i in range(branches) if f"_Branch_{i}_" in n), -1) for n in inputs]
    _expect(
        order == list(range(branches)),
        f"{name}: inputs {inputs} are not branches 0..{branches - 1} in order",
    )


def _check_scale_sum(config: _KerasConfig, prefix: str, block: Block35 | Block17 | Block8) -> None:
    """``<prefix>_ScaleSum`` must be ``inputs[0] + inputs[1] * scale`` with the module's scale."""
    name = f"{prefix}_ScaleSum"
    cfg = config.layer(name, "Lambda")
    scale = cfg.get("arguments", {}).get("scale")
    _expect(
        isinstance(scale, int | float) and math.isclose(float(scale), block.scale),
        f"{name}: residual scale {scale!r} in the file, module uses {block.scale}",
    )
    function = cfg.get("function")
    code = function[0] if isinstance(function, list) and function else None
    _expect(
        cfg.get("function_type") == "lambda"
        and isinstance(code, str)
        and _SCALE_SUM_BYTECODE in base64.b64decode(code),
        f"{name}: Lambda is not `inputs[0] + inputs[1] * scale`",
    )
    inputs = config.inbound(name)
    _expect(
        len(inputs) == 2 and inputs[1] == f"{prefix}_Conv2d_1x1",
        f"{name}: inputs {inputs}, expected [shortcut, {prefix}_Conv2d_1x1]",
    )


def _convert(file: h5py.File) -> tuple[InceptionResnetV1, ConversionReport]:
    backend = _decode(file.attrs.get("backend", "tensorflow"))
    keras_version = _decode(file.attrs.get("keras_version", "unknown"))
    _expect(backend == "tensorflow", f"backend {backend!r}: kernels would not be HWIO")
    if keras_version != EXPECTED_KERAS_VERSION:
        logger.warning("keras_version %s, expected %s", keras_version, EXPECTED_KERAS_VERSION)
    if "model_config" not in file.attrs or "model_weights" not in file:
        raise ConversionError("not a Keras full-model h5: need model_config and model_weights")

    config = _KerasConfig(file.attrs["model_config"])
    store = _WeightStore(file["model_weights"])
    saved_layers = [_decode(n) for n in file["model_weights"].attrs.get("layer_names", [])]
    _expect(
        saved_layers == config.names,
        "model_weights layer_names do not match the layers of model_config",
    )

    input_cfg = config.layer("input_1", "InputLayer")
    _expect(
        list(input_cfg["batch_input_shape"]) == INPUT_SHAPE,
        f"input shape {input_cfg['batch_input_shape']}, expected {INPUT_SHAPE}",
    )
    dense_cfg = config.layer("Bottleneck", "Dense")
    _expect(dense_cfg["use_bias"] is False, "Bottleneck: Dense has a bias")
    _expect(dense_cfg["activation"] == "linear", f"Bottleneck: {dense_cfg['activation']}")

    model = InceptionResnetV1(embedding_size=int(dense_cfg["units"]))
    targets = _Targets(model)

    for name, basic in _all_basic_convs(model):
        _load_conv(config, store, targets, name, basic.conv)
        _load_batch_norm(config, store, targets, f"{name}_BatchNorm", basic.bn)
        _check_activation(config, f"{name}_Activation")

    for residual in _residual_blocks(model):
        prefix, block = residual.prefix, residual.block
        _check_concatenate(config, f"{prefix}_Concatenate", len(residual.branches))
        _load_conv(config, store, targets, f"{prefix}_Conv2d_1x1", block.up)
        _check_scale_sum(config, prefix, block)
        if residual.final_relu:
            _check_activation(config, f"{prefix}_Activation")

    for pool in _MAX_POOLS:
        _check_max_pool(config, pool)
    _check_concatenate(config, "Mixed_6a", 3)
    _check_concatenate(config, "Mixed_7a", 4)

    config.layer("AvgPool", "GlobalAveragePooling2D")
    dropout_cfg = config.layer("Dropout", "Dropout")
    _expect(
        math.isclose(float(dropout_cfg["rate"]), model.dropout.p, abs_tol=1e-6),
        f"Dropout: rate {dropout_cfg['rate']}, module uses {model.dropout.p}",
    )
    dense = store.take("Bottleneck", "kernel")
    if dense.shape != (FEATURE_DIM, model.embedding_size):
        raise ConversionError(
            f"array 'Bottleneck/kernel:0' has shape {dense.shape}, expected "
            f"{(FEATURE_DIM, model.embedding_size)} ([in, out])"
        )
    targets.fill(model.bottleneck.weight, dense.T, "Bottleneck/kernel:0")
    _load_batch_norm(config, store, targets, "Bottleneck_BatchNorm", model.bottleneck_bn)

    layers_checked = config.check_all_visited()
    store.check_all_used()
    targets.check_all_filled()
    model.eval()
    report = ConversionReport(
        arrays_used=store.total_arrays,
        values_used=store.total_values,
        tensors_from_file=targets.from_file,
        tensors_constant=targets.constant,
        layers_checked=layers_checked,
        keras_version=keras_version,
    )
    logger.info(
        "converted FaceNet Keras %s: %d layers, %d arrays (%d values) -> %d tensors, %d constants",
        keras_version,
        report.layers_checked,
        report.arrays_used,
        report.values_used,
        report.tensors_from_file,
        report.tensors_constant,
    )
    return model, report


def convert_facenet_keras(
    source: Path | h5py.File,
) -> tuple[InceptionResnetV1, ConversionReport]:
    """Build an :class:`InceptionResnetV1` (eval mode) from ``facenet_keras.h5``.

    ``source`` is a path or an already open h5py file (e.g. an in-memory copy).
    Returns the model, whose forward maps float32 ``[N, 3, 160, 160]`` to unit-norm
    ``[N, 128]``, and a :class:`ConversionReport`. Raises :class:`ConversionError` when the
    file deviates from the expected layout, and ``FileNotFoundError`` when it is absent.
    """
    if isinstance(source, h5py.File):
        return _convert(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise ConversionError(f"{path} is not a readable HDF5 file: {exc}") from exc
    with file:
        return _convert(file)


def load_facenet_keras(h5_path: Path) -> InceptionResnetV1:
    """Load ``facenet_keras.h5`` into an :class:`InceptionResnetV1` in eval mode.

    Every array of the file is used exactly once and every module tensor is filled exactly
    once; see :func:`convert_facenet_keras` for the report.
    """
    model, _ = convert_facenet_keras(h5_path)
    return model
