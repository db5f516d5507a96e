"""Inception-ResNet-v1 as a chain of named stages: freezing by layer name, and the split
into a frozen trunk and a trainable head that the CPU cache trains on.

Stage names, in order: ``conv2d_1a``, ``conv2d_2a``, ``conv2d_2b``, ``maxpool_3a``,
``conv2d_3b``, ``conv2d_4a``, ``conv2d_4b``, ``block35.0`` .. ``block35.4``, ``mixed_6a``,
``block17.0`` .. ``block17.9``, ``mixed_7a``, ``block8.0`` .. ``block8.5``, then the
``head`` (average pool, dropout, bottleneck, its batch norm, L2 normalisation). A whole
group can be named too: ``block35`` is ``block35.4``, ``block17`` is ``block17.9``,
``block8`` is ``block8.5``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.errors import TrainingConfigError
from training.inception_resnet_v1 import InceptionResnetV1

BnMode = Literal["frozen", "train"]
"""``frozen``: every batch norm keeps its running statistics (eval mode) while its layer
trains, the usual choice for fine-tuning on small data; ``train``: trainable layers'
batch norms use batch statistics and update their running averages."""


def stages(model: InceptionResnetV1) -> list[tuple[str, nn.Module]]:
    """The feature stages in forward order (the head excluded)."""
    out: list[tuple[str, nn.Module]] = []
    for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b"):
        out.append((name, getattr(model, name)))
    out.append(("conv2d_4a", model.conv2d_4a))
    out.append(("conv2d_4b", model.conv2d_4b))
    out += [(f"block35.{i}", m) for i, m in enumerate(model.block35)]
    out.append(("mixed_6a", model.mixed_6a))
    out += [(f"block17.{i}", m) for i, m in enumerate(model.block17)]
    out.append(("mixed_7a", model.mixed_7a))
    out += [(f"block8.{i}", m) for i, m in enumerate(model.block8)]
    return out


def stage_names(model: InceptionResnetV1 | None = None) -> list[str]:
    return [name for name, _ in stages(model or InceptionResnetV1())]


_GROUP_LAST = {"block35": "block35.4", "block17": "block17.9", "block8": "block8.5"}


def split_index(model: InceptionResnetV1, freeze_until: str | None) -> int:
    """How many stages are frozen: all of them up to and including ``freeze_until``
    (``None``: none; ``head``: every stage and the head)."""
    if freeze_until is None or freeze_until == "none":
        return 0
    names = stage_names(model)
    if freeze_until == "head":
        return len(names) + 1
    name = _GROUP_LAST.get(freeze_until, freeze_until)
    if name not in names:
        raise TrainingConfigError(
            f"unknown layer {freeze_until!r} to freeze up to; one of: none, "
            + ", ".join([*names, *_GROUP_LAST])
        )
    return names.index(name) + 1


def head_modules(model: InceptionResnetV1) -> list[nn.Module]:
    return [model.bottleneck, model.bottleneck_bn]


def freeze(model: InceptionResnetV1, freeze_until: str | None) -> list[str]:
    """Freeze every parameter up to and including stage ``freeze_until``; return the names
    of the parameters left trainable."""
    n = split_index(model, freeze_until)
    frozen = [m for _, m in stages(model)[:n]]
    if n > len(stages(model)):
        frozen += head_modules(model)
    for p in model.parameters():
        p.requires_grad_(True)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def set_train_mode(model: InceptionResnetV1, bn: BnMode) -> None:
    """Train mode for layers with trainable parameters (dropout on), eval mode for frozen
    stages; with ``bn="frozen"`` every batch norm stays in eval mode."""
    model.train()
    for _, m in stages(model):
        if not any(p.requires_grad for p in m.parameters()):
            m.eval()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.eval()


class Trunk(nn.Module):
    """The first ``n`` stages of ``model`` (shared, not copied): images -> features."""

    def __init__(self, model: InceptionResnetV1, n: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList([m for _, m in stages(model)[:n]])

    def forward(self, x: Tensor) -> Tensor:
        for m in self.parts:
            x = m(x)
        return x


class Head(nn.Module):
    """Every stage after the first ``n`` and the embedding head: features -> unit
    embeddings float[N, D]. With ``n`` = all stages its input is the last feature map."""

    def __init__(self, model: InceptionResnetV1, n: int) -> None:
        super().__init__()
        self.model = model
        self.parts = nn.ModuleList([m for _, m in stages(model)[n:]])

    def forward(self, x: Tensor) -> Tensor:
        for m in self.parts:
            x = m(x)
        x = self.model.dropout(torch.flatten(self.model.avgpool(x), 1))
        x = self.model.bottleneck_bn(self.model.bottleneck(x))
        return F.normalize(x, p=2.0, dim=1)


def feature_shape(model: InceptionResnetV1, n: int, size: int = 160) -> tuple[int, ...]:
    """Shape of one crop's trunk output (without the batch axis)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        out = Trunk(model, n)(torch.zeros(1, 3, size, size))
        model.train(was)
    return tuple(out.shape[1:])


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
