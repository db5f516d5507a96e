"""MTCNN's three cascaded networks (P-Net, R-Net, O-Net) as PyTorch modules.

The layer names match the state dicts shipped with facenet-pytorch 2.6.0 (``pnet.pt``,
``rnet.pt``, ``onet.pt``), so those files load with ``load_state_dict(strict=True)``; see
:func:`export.mtcnn_weights.load_mtcnn`.

All three networks take float32 NCHW **RGB** input already normalised as
``(pixel - 127.5) * 0.0078125``.

Weight quirk: the original MTCNN was trained in Caffe/MATLAB on transposed (column-major)
images. The converted convolution kernels work on ordinary row-major images, but the first
dense layer of R-Net and O-Net still expects its input flattened in (W, H, C) order, so the
feature map is permuted ``NCHW -> NWHC`` before flattening. Exported ONNX graphs carry that
permute, so callers never need to transpose anything themselves.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ONet", "PNet", "RNet"]


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """Flatten a feature map ``[N, C, H, W]`` to ``[N, W*H*C]`` in (W, H, C) order.

    This is the layout the converted Caffe dense weights expect.
    """
    return torch.flatten(x.permute(0, 3, 2, 1), start_dim=1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, runs once per pyramid scale.

    Input ``x``: float32 ``[N, 3, H, W]`` with ``H, W >= 12``. The output maps have size
    ``h = ceil((H - 2) / 2) - 4`` (resp. ``w``); each output cell sees a 12x12 window at
    stride 2 in the input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run P-Net.

        Args:
            x: float32 ``[N, 3, H, W]``, normalised RGB.

        Returns:
            ``(reg, prob)``: ``reg`` float32 ``[N, 4, h, w]`` box offsets (dx1, dy1, dx2, dy2)
            relative to the 12x12 window, and ``prob`` float32 ``[N, 2, h, w]``, the softmax
            over the channel dim (channel 1 = face).
        """
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(x), dim=1)
        reg = self.conv4_2(x)
        return reg, prob


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run R-Net.

        Args:
            x: float32 ``[N, 3, 24, 24]``, normalised RGB.

        Returns:
            ``(reg, prob)``: ``reg`` float32 ``[N, 4]`` box offsets and ``prob`` float32
            ``[N, 2]`` softmax scores (column 1 = face).
        """
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # [N, 64, 3, 3]
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        prob = torch.softmax(self.dense5_1(x), dim=1)
        reg = self.dense5_2(x)
        return reg, prob


class ONet(nn.Module):
    """Output network on 48x48 crops: final score, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run O-Net.

        Args:
            x: float32 ``[N, 3, 48, 48]``, normalised RGB.

        Returns:
            ``(reg, landmarks, prob)``: ``reg`` float32 ``[N, 4]`` box offsets, ``landmarks``
            float32 ``[N, 10]`` (x1..x5 then y1..y5, each a fraction of the crop's width /
            height; order: left eye, right eye, nose, left mouth corner, right mouth corner
            as seen in the image) and ``prob`` float32 ``[N, 2]`` softmax scores.
        """
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # [N, 128, 3, 3]
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        prob = torch.softmax(self.dense6_1(x), dim=1)
        reg = self.dense6_2(x)
        landmarks = self.dense6_3(x)
        return reg, landmarks, prob
