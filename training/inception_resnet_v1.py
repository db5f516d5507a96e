"""Inception-ResNet-v1 face embedder (FaceNet, davidsandberg 20170512-110547 layout).

Pure PyTorch, no torchvision. The layer structure mirrors the published Keras port
(``facenet_keras.h5``) so that :mod:`training.facenet_keras` can fill every tensor from it.

Input: float32 ``[N, 3, 160, 160]``, RGB, already prewhitened by the caller
(per-image ``(x - mean) / max(std, 1 / sqrt(x.size))``).
Output: float32 ``[N, embedding_size]``, L2-normalised.

Spatial sizes for a 160x160 input::

    stem        160 -> 79 -> 77 -> 77 -> 38 -> 38 -> 36 -> 17   (256 channels)
    Block35 x5  17x17x256
    Mixed_6a    17 -> 8                                          (896 channels)
    Block17 x10 8x8x896
    Mixed_7a    8 -> 3                                           (1792 channels)
    Block8 x6   3x3x1792 -> global average pool -> 1792 -> 128
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
"""Batch-norm epsilon of the original TensorFlow / Keras model."""

BN_MOMENTUM = 0.005
"""PyTorch momentum equivalent to the original moving-average decay of 0.995."""

DROPOUT_RATE = 0.2
"""Dropout before the bottleneck (keep probability 0.8 in the original); inert in eval."""

BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm, ReLU.

    ``padding`` is symmetric; with stride 1 and an odd kernel, ``kernel // 2`` per axis
    reproduces TensorFlow's "same" padding exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A: 17x17x256 -> 17x17x256, residual scaled by ``scale``, then ReLU."""

    def __init__(self, scale: float = BLOCK35_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 32, 1),
            BasicConv2d(32, 32, 3, padding=1),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1),
            BasicConv2d(32, 32, 3, padding=1),
            BasicConv2d(32, 32, 3, padding=1),
        )
        self.up = nn.Conv2d(96, 256, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), dim=1)
        return F.relu(x + self.scale * self.up(mixed))


class Block17(nn.Module):
    """Inception-ResNet-B: 8x8x896 -> 8x8x896, residual scaled by ``scale``, then ReLU."""

    def __init__(self, scale: float = BLOCK17_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, 1),
            BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
            BasicConv2d(128, 128, (7, 1), padding=(3, 0)),
        )
        self.up = nn.Conv2d(256, 896, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat((self.branch0(x), self.branch1(x)), dim=1)
        return F.relu(x + self.scale * self.up(mixed))


class Block8(nn.Module):
    """Inception-ResNet-C: 3x3x1792 -> 3x3x1792, residual scaled by ``scale``.

    ``activate=False`` drops the final ReLU (used by the last block only).
    """

    def __init__(self, scale: float = BLOCK8_SCALE, activate: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.activate = activate
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, 1),
            BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
            BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
        )
        self.up = nn.Conv2d(384, 1792, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat((self.branch0(x), self.branch1(x)), dim=1)
        out = x + self.scale * self.up(mixed)
        return F.relu(out) if self.activate else out


class Mixed6a(nn.Module):
    """Reduction-A: 17x17x256 -> 8x8x896 (384 + 256 + 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1),
            BasicConv2d(192, 192, 3, padding=1),
            BasicConv2d(192, 256, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), dim=1)


class Mixed7a(nn.Module):
    """Reduction-B: 8x8x896 -> 3x3x1792 (384 + 256 + 256 + 896 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(
            BasicConv2d(896, 256, 1),
            BasicConv2d(256, 384, 3, stride=2),
        )
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 256, 1),
            BasicConv2d(256, 256, 3, stride=2),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1),
            BasicConv2d(256, 256, 3, padding=1),
            BasicConv2d(256, 256, 3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            (self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), dim=1
        )


class InceptionResnetV1(nn.Module):
    """FaceNet Inception-ResNet-v1: ``[N, 3, 160, 160]`` -> L2-normalised ``[N, embedding_size]``.

    The bottleneck is a bias-free linear layer followed by a (centre-only in the original)
    batch norm over the embedding; the result is L2-normalised.
    """

    def __init__(self, embedding_size: int = 128) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        # Stem: 160x160x3 -> 17x17x256.
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        # Body.
        self.block35 = nn.Sequential(*(Block35() for _ in range(5)))
        self.mixed_6a = Mixed6a()
        self.block17 = nn.Sequential(*(Block17() for _ in range(10)))
        self.mixed_7a = Mixed7a()
        self.block8 = nn.Sequential(
            *(Block8() for _ in range(5)),
            Block8(scale=1.0, activate=False),
        )
        # Head.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(DROPOUT_RATE)
        self.bottleneck = nn.Linear(1792, embedding_size, bias=False)
        self.bottleneck_bn = nn.BatchNorm1d(embedding_size, eps=BN_EPS, momentum=BN_MOMENTUM)

    def features(self, x: Tensor) -> Tensor:
        """``[N, 3, 160, 160]`` -> pooled features ``[N, 1792]``."""
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.block35(x)
        x = self.mixed_6a(x)
        x = self.block17(x)
        x = self.mixed_7a(x)
        x = self.block8(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, 160, 160]`` prewhitened RGB -> unit-norm ``[N, embedding_size]``."""
        x = self.dropout(self.features(x))
        x = self.bottleneck_bn(self.bottleneck(x))
        return F.normalize(x, p=2.0, dim=1)
