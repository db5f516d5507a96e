"""dlib's face-recognition ResNet (``anet_type``, 128-d) as a PyTorch module, and its loader.

The network (see :mod:`training.dlib_dat` for the file and the C++ type) in inference form:
convolutions with bias, per-channel affine layers (folded batch norms), ReLU, a 3x3/2 max
pool, 14 residual units and a bias-free projection of the global average to 128 numbers.

Two details of dlib's arithmetic are reproduced exactly:

* the input layer: ``(pixel - channel_mean) / 256`` with the means stored in the file, so the
  module takes RGB float32[N, 3, 150, 150] in 0..255 (``image``);
* ``add_prev`` adds tensors of different shapes by zero-filling the smaller one at the end
  of each axis (``tt::add``): a down-sampling unit adds a 3x3-stride-2 branch to a 2x2
  average pool of its input, whose channels (and, from 8x8 and 4x4 maps, spatial sizes:
  3 vs 4, 1 vs 2) differ. The pads are fixed for the 150x150 input and computed here.

The output is dlib's descriptor itself (not normalised; dlib compares Euclidean distances at
0.6). Unit vectors for cosine scoring are the embedder's business, as for FaceNet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.dlib_dat import (
    EMBEDDING_SIZE,
    INPUT_SIZE,
    DatArrays,
    DatLayer,
    DlibNetwork,
    read_dlib_resnet,
)
from training.errors import ConversionError

log = logging.getLogger(__name__)

__all__ = ["DlibConversionReport", "DlibResNet", "convert_dlib_resnet", "load_dlib_resnet"]

# (filters, units, first unit down-samples) per level, input side first (alevel4 .. alevel0).
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return 1 + (size + 2 * padding - kernel) // stride


class Affine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE: ``x * scale[c] + shift[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class Unit(nn.Module):
    """``ares``/``ares_down``: relu(add_prev(block(x), x or avg_pool(x)))."""

    def __init__(self, in_ch: int, out_ch: int, size: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 0 if down else 1)
        self.aff1 = Affine(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.aff2 = Affine(out_ch)
        branch = _conv_out(size, 3, stride, 0 if down else 1)
        skip = _conv_out(size, 2, 2, 0) if down else size
        self.out_size = max(branch, skip)
        # Zero-fill at the end of (channels, rows, cols), as dlib's tt::add does.
        self._pad_branch = (0, self.out_size - branch) * 2 + (0, 0)
        self._pad_skip = (0, self.out_size - skip) * 2 + (0, out_ch - in_ch)
        if out_ch < in_ch:
            raise ValueError("a unit never narrows")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        if any(self._pad_branch):
            y = F.pad(y, self._pad_branch)
        if any(self._pad_skip):
            skip = F.pad(skip, self._pad_skip)
        return F.relu(y + skip)


class DlibResNet(nn.Module):
    """RGB float32[N, 3, 150, 150] (0..255) -> dlib's descriptor float32[N, 128]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("channel_means", torch.tensor([122.782, 117.001, 104.298]))
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff = Affine(32)
        size = _conv_out(_conv_out(INPUT_SIZE, 7, 2, 0), 3, 2, 0)  # 150 -> 72 -> 35
        units: list[Unit] = []
        channels = 32
        for filters, count, down in LEVELS:
            for k in range(count):
                unit = Unit(channels, filters, size, down and k == 0)
                units.append(unit)
                channels, size = filters, unit.out_size
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(channels, EMBEDDING_SIZE, bias=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        means: torch.Tensor = self.channel_means  # type: ignore[assignment]
        x = (image - means[None, :, None, None]) / 256.0
        x = F.max_pool2d(F.relu(self.aff(self.conv(x))), 3, 2)
        x = self.units(x)
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))  # avg_pool_everything, fc_no_bias
        return out


@dataclass(frozen=True)
class DlibConversionReport:
    """``arrays_used``/``values_used``: the file's parameter arrays (all, each once);
    ``tensors_from_file``: module tensors filled from them (the channel means included);
    ``layers``: dlib layers matched (tags and skips are not layers)."""

    arrays_used: int
    values_used: int
    tensors_from_file: int
    layers: int
    loss: dict[str, float]


class _Filler:
    """Copies file arrays into module tensors; every tensor exactly once."""

    def __init__(self, module: nn.Module, arrays: DatArrays) -> None:
        named = [*module.named_parameters(), *module.named_buffers()]
        self._names = {id(t): n for n, t in named}
        self._filled: set[str] = set()
        self.arrays = arrays

    def fill(
        self, target: torch.Tensor, layer: DatLayer, key: str, transpose: bool = False
    ) -> None:
        name = self._names.get(id(target))
        if name is None or name in self._filled:
            raise ConversionError(f"internal: module tensor {name} unknown or filled twice")
        shape = tuple(target.shape[::-1]) if transpose else tuple(target.shape)
        value = self.arrays.take(layer, key, shape)
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value.T if transpose else value)))
        self._filled.add(name)

    def mark(self, target: torch.Tensor) -> None:
        self._filled.add(self._names[id(target)])

    def check(self) -> int:
        missing = sorted(set(self._names.values()) - self._filled)
        if missing:
            raise ConversionError(f"{len(missing)} module tensor(s) not filled: {missing[:10]}")
        self.arrays.check_all_used()
        return len(self._filled)


def _expect_kinds(layers: list[DatLayer], kinds: tuple[str, ...]) -> None:
    found = tuple(layer.kind for layer in layers)
    if found != kinds:
        where = layers[0].index if layers else "end"
        raise ConversionError(f"layers from {where}: {found}, expected {kinds}")


def convert_dlib_resnet(net: DlibNetwork) -> tuple[DlibResNet, DlibConversionReport]:
    """Build :class:`DlibResNet` from a parsed file; every array used once, shapes checked."""
    model = DlibResNet()
    arrays = net.arrays()
    fill = _Filler(model, arrays)
    with torch.no_grad():
        model.channel_means.copy_(torch.tensor(net.channel_means))  # type: ignore[operator]
    fill.mark(model.channel_means)  # type: ignore[arg-type]
    layers = list(net.layers)

    def conv_affine(conv: nn.Conv2d, aff: Affine) -> None:
        con, affine = layers.pop(0), layers.pop(0)
        _expect_kinds([con, affine], ("con", "affine"))
        if con.config["stride"] != conv.stride[0] or con.config["padding"] != conv.padding[0]:
            raise ConversionError(f"{con.name}: stride/padding {con.config} do not fit {conv}")
        fill.fill(conv.weight, con, "weight")
        assert conv.bias is not None
        fill.fill(conv.bias, con, "bias")
        fill.fill(aff.scale, affine, "scale")
        fill.fill(aff.shift, affine, "shift")

    conv_affine(model.conv, model.aff)
    _expect_kinds(layers[:2], ("relu", "max_pool"))
    del layers[:2]
    for unit in model.units:
        assert isinstance(unit, Unit)
        conv_affine(unit.conv1, unit.aff1)
        _expect_kinds(layers[:1], ("relu",))
        layers.pop(0)
        conv_affine(unit.conv2, unit.aff2)
        tail = ("avg_pool", "add_prev", "relu") if unit.down else ("add_prev", "relu")
        _expect_kinds(layers[: len(tail)], tail)
        if unit.down and (layers[0].config["window"], layers[0].config["stride"]) != (2, 2):
            raise ConversionError(f"{layers[0].name}: {layers[0].config}")
        if layers[len(tail) - 2].config["tag"] != (2 if unit.down else 1):
            raise ConversionError(f"{layers[len(tail) - 2].name}: wrong tag")
        del layers[: len(tail)]
    _expect_kinds(layers[:1], ("avg_pool",))
    if layers[0].config["window"] != 0:
        raise ConversionError(f"{layers[0].name}: not avg_pool_everything")
    layers.pop(0)
    _expect_kinds(layers, ("fc",))
    fill.fill(model.fc.weight, layers[0], "weight", transpose=True)
    tensors = fill.check()
    report = DlibConversionReport(
        arrays_used=arrays.used,
        values_used=arrays.total_values,
        tensors_from_file=tensors,
        layers=len(net.layers),
        loss=dict(net.loss),
    )
    return model.eval(), report


def load_dlib_resnet(path: Path) -> DlibResNet:
    """Read ``dlib_face_recognition_resnet_model_v1.dat`` into an eval-mode module."""
    model, report = convert_dlib_resnet(read_dlib_resnet(path))
    log.info("dlib ResNet: %d arrays, %d values", report.arrays_used, report.values_used)
    return model
