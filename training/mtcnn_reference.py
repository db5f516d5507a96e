"""PyTorch-eager MTCNN face detector, faithful to facenet-pytorch 2.6.0's ``detect_face``.

This is the reference the ONNX Runtime detector is measured against, both for speed and for
output parity, so it deliberately keeps facenet-pytorch's algorithm and arithmetic,
including its MATLAB-inherited off-by-one conventions:

* Scale pyramid: ``m = 12 / min_face_size``; scales ``m * factor**k`` while
  ``min(H, W) * scale >= 12``; each level is resized to ``(int(H*s + 1), int(W*s + 1))``.
* All resampling (pyramid levels and the 24x24 / 48x48 crops) is
  ``torch.nn.functional.interpolate(mode="area")``, i.e. adaptive average pooling.
* P-Net cell ``(row, col)`` at scale ``s`` maps to the box
  ``floor((2*col + 1) / s), floor((2*row + 1) / s), floor((2*col + 12) / s),
  floor((2*row + 12) / s)`` (1-based pixel coordinates, float32 arithmetic); a cell is kept
  if its face probability is ``>= thresholds[0]``.
* NMS: per scale 0.5 then across scales 0.7, both "Union" with continuous areas
  (torchvision semantics); after R-Net 0.7 "Union"; after O-Net 0.7 "Min" with inclusive
  (``+1``) pixel areas (facenet-pytorch's numpy NMS). A box is suppressed when its overlap is
  strictly greater than the threshold.
* P-Net regression uses ``w = x2 - x1``; R-Net/O-Net regression (``bbreg``) uses
  ``w = x2 - x1 + 1``. After P-Net and R-Net the boxes are squared around their centre
  (``rerec``); the final O-Net boxes are not.
* Crops: box coordinates are truncated toward zero, clamped to ``[1, W]`` / ``[1, H]`` and
  the 1-based inclusive range ``[x1, x2]`` is cut out as ``image[y1-1:y2, x1-1:x2]`` (no zero
  padding: boxes hanging off the image are cropped to the image, then stretched to square).
* R-Net and O-Net keep boxes with score strictly ``> thresholds[1/2]``.
* Landmarks are placed in the O-Net input box before its regression:
  ``x = (x2 - x1 + 1) * lx + x1 - 1`` (likewise for y).

* Candidate order matters for NMS ties: P-Net candidates are concatenated scale by scale
  (largest scale first), each scale in its NMS keep order; every later stage keeps its
  input order through thresholding and outputs boxes in NMS keep order (decreasing score).

Differences from facenet-pytorch: one image at a time; a box whose clamped crop is empty is
dropped together with its network outputs (facenet-pytorch would misalign boxes and
outputs there, or crash); an image with no pyramid level or no candidate returns empty
arrays instead of raising. NMS breaks exact score ties deterministically by candidate order
(the earlier candidate wins). facenet-pytorch's own tie order is implementation-defined
(torch's unstable sort inside torchvision's NMS, numpy's SIMD quicksort in its "Min" NMS)
and it matters in practice: O-Net scores saturate near 1.0, so two final candidates can
tie exactly and the two implementations may then keep different, equally scored boxes.
Otherwise the results are bit-identical to facenet-pytorch's on the same CPU, which also
depends on building the image tensor with the same (channels-last) strides, see
:meth:`EagerMTCNN.detect`.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn.functional import interpolate

from training.mtcnn import ONet, PNet, RNet

__all__ = [
    "EagerMTCNN",
    "bbreg",
    "crop_boxes",
    "generate_bounding_boxes",
    "imresample",
    "nms",
    "pyramid_scales",
    "rerec",
]

logger = logging.getLogger(__name__)

_PNET_STRIDE = 2
_PNET_CELL = 12
_BATCH = 512  # facenet-pytorch's fixed_batch_process chunk size for R-Net / O-Net


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """Return the image-pyramid scales, in facenet-pytorch's order and float64 arithmetic.

    Level ``k`` has scale ``m * factor**k`` (computed by repeated multiplication) with
    ``m = 12 / min_face_size``, for as long as ``min(height, width) * scale >= 12``.
    """
    m = 12.0 / min_face_size
    min_side = min(height, width) * m
    scale = m
    scales: list[float] = []
    while min_side >= 12:
        scales.append(scale)
        scale *= factor
        min_side *= factor
    return scales


def imresample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``img`` float32 ``[N, C, H, W]`` to ``[N, C, *size]`` with area interpolation."""
    return interpolate(img, size=size, mode="area")


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    mode: Literal["union", "min"] = "union",
) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: float32 ``[N, 4]`` as ``(x1, y1, x2, y2)``.
        scores: float32 ``[N]``.
        threshold: a box is suppressed by a higher-scored kept box when their overlap is
            strictly greater than this (a NaN overlap suppresses in ``"min"`` mode only).
        mode: ``"union"``: intersection over union with continuous areas
            ``(x2 - x1) * (y2 - y1)``, as ``torchvision.ops.nms``. ``"min"``: intersection
            over the smaller area with inclusive pixel areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``,
            as facenet-pytorch's ``nms_numpy(..., 'Min')``.

    Returns:
        int64 ``[K]``: indices of the kept boxes, by decreasing score; among equal scores
        the lower index comes (and is kept) first.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    pad = 1.0 if mode == "min" else 0.0
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    areas = (x2 - x1 + pad) * (y2 - y1 + pad)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep: list[torch.Tensor] = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        if rest.numel() == 0:
            break
        inter_w = torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest]) + pad
        inter_h = torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest]) + pad
        inter = inter_w.clamp(min=0.0) * inter_h.clamp(min=0.0)
        # The two sources differ in details that this reproduces: torchvision compares the
        # float32 overlap with the threshold in float64 and suppresses on ``ovr > t`` (a NaN
        # overlap keeps the box); facenet-pytorch's numpy NMS compares in float32 and keeps
        # on ``o <= t`` (a NaN overlap drops it).
        if mode == "min":
            overlap = inter / torch.minimum(areas[best], areas[rest])
            survives = overlap <= torch.tensor(threshold, dtype=overlap.dtype)
        else:
            overlap = inter / (areas[best] + areas[rest] - inter)
            survives = ~(overlap.to(torch.float64) > threshold)
        order = rest[survives]
    return torch.stack(keep)


def generate_bounding_boxes(
    reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float
) -> torch.Tensor:
    """Turn one image's P-Net maps into candidate boxes in original-image coordinates.

    Args:
        reg: float32 ``[4, h, w]`` P-Net offsets.
        prob: float32 ``[h, w]`` face probability (softmax channel 1).
        scale: the pyramid scale the maps were computed at.
        threshold: keep cells with ``prob >= threshold``.

    Returns:
        float32 ``[K, 9]``: ``x1, y1, x2, y2, score, dx1, dy1, dx2, dy2`` in row-major cell
        order (1-based, MATLAB-style pixel coordinates, not yet regressed).
    """
    mask = prob >= threshold
    cells = mask.nonzero()  # [K, 2] as (row, col)
    score = prob[mask]
    offsets = reg[:, mask].permute(1, 0)
    corner = cells.flip(1).to(reg.dtype)  # (col, row) = (x, y)
    top_left = ((_PNET_STRIDE * corner + 1) / scale).floor()
    bottom_right = ((_PNET_STRIDE * corner + _PNET_CELL) / scale).floor()
    return torch.cat([top_left, bottom_right, score.unsqueeze(1), offsets], dim=1)


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Square boxes around their centre with side ``max(w, h)`` (``w = x2 - x1``).

    Args:
        boxes: float32 ``[N, >=4]``; columns past 4 are copied through.

    Returns:
        A new tensor of the same shape.
    """
    out = boxes.clone()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-Net/O-Net offsets with inclusive widths (``w = x2 - x1 + 1``).

    Args:
        boxes: float32 ``[N, >=4]``; columns past 4 are copied through.
        reg: float32 ``[N, 4]`` offsets ``(dx1, dy1, dx2, dy2)``.

    Returns:
        A new tensor of the same shape as ``boxes``.
    """
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def crop_boxes(
    img: torch.Tensor, boxes: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each box out of ``img`` and area-resample it to ``size x size``.

    Coordinates are truncated toward zero and clamped to the image as in facenet-pytorch's
    ``pad``: the 1-based inclusive range ``[x1, x2] x [y1, y2]`` becomes the slice
    ``img[..., y1-1:y2, x1-1:x2]``.

    Args:
        img: float32 ``[1, 3, H, W]`` un-normalised RGB.
        boxes: float32 ``[N, >=4]``.
        size: output side (24 for R-Net, 48 for O-Net).

    Returns:
        ``(crops, valid)``: ``crops`` float32 ``[M, 3, size, size]`` normalised as
        ``(x - 127.5) * 0.0078125``, one per box whose clamped crop is non-empty; ``valid``
        bool ``[N]`` marking those boxes.
    """
    height, width = int(img.shape[2]), int(img.shape[3])
    coords = boxes[:, :4].trunc().to(torch.int32).tolist()
    crops: list[torch.Tensor] = []
    valid: list[bool] = []
    for x1, y1, x2, y2 in coords:
        x1, y1 = max(x1, 1), max(y1, 1)
        x2, y2 = min(x2, width), min(y2, height)
        ok = y2 > y1 - 1 and x2 > x1 - 1
        valid.append(ok)
        if ok:
            # select-then-unsqueeze, as facenet-pytorch does: it fixes the strides (memory
            # format) of the crop and so the rounding of the resampling and the network.
            crop = img[0, :, y1 - 1 : y2, x1 - 1 : x2].unsqueeze(0)
            crops.append(imresample(crop, (size, size)))
    empty = img.new_empty((0, img.shape[1], size, size))
    batch = torch.cat(crops, dim=0) if crops else empty
    return (batch - 127.5) * 0.0078125, torch.tensor(valid, dtype=torch.bool)


def _empty_result() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    return (
        np.zeros((0, 4), dtype=np.float32),
        np.zeros((0,), dtype=np.float32),
        np.zeros((0, 5, 2), dtype=np.float32),
    )


class EagerMTCNN:
    """Three-stage MTCNN detector running the networks eagerly in PyTorch, one image a call.

    Args:
        pnet: P-Net (e.g. from :func:`export.mtcnn_weights.load_mtcnn`).
        rnet: R-Net.
        onet: O-Net.
        min_face_size: smallest face side, in pixels, the pyramid looks for.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: ratio between successive pyramid scales.
    """

    def __init__(
        self,
        pnet: PNet,
        rnet: RNet,
        onet: ONet,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        if min_face_size <= 0:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must have 3 values, got {thresholds!r}")
        self.pnet = pnet.eval()
        self.rnet = rnet.eval()
        self.onet = onet.eval()
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor

    def detect(
        self, image: NDArray[np.uint8]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Detect faces in one RGB image.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.

        Returns:
            ``(boxes, scores, landmarks)``: ``boxes`` float32 ``[K, 4]`` as
            ``(x1, y1, x2, y2)`` pixel coordinates, ``scores`` float32 ``[K]`` O-Net face
            probabilities, ``landmarks`` float32 ``[K, 5, 2]`` as ``(x, y)`` for left eye,
            right eye, nose, left and right mouth corner (as seen in the image). Faces are in
            order of decreasing score; ``K`` may be 0.
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        with torch.inference_mode():
            # Build the batch exactly as facenet-pytorch does (HWC batch permuted to NCHW, so
            # channels-last strides): the memory format picks the conv / pooling kernels and
            # thus the float rounding, and bit-faithfulness to the reference depends on it.
            batch = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
            img_f = batch.permute(0, 3, 1, 2).float()
            boxes = self._stage_pnet(img_f)
            if boxes.shape[0] > 0:
                boxes = self._stage_rnet(img_f, boxes)
            if boxes.shape[0] == 0:
                return _empty_result()
            boxes, points = self._stage_onet(img_f, boxes)
        if boxes.shape[0] == 0:
            return _empty_result()
        return (
            boxes[:, :4].numpy().astype(np.float32, copy=True),
            boxes[:, 4].numpy().astype(np.float32, copy=True),
            points.numpy().astype(np.float32, copy=True),
        )

    def _stage_pnet(self, img: torch.Tensor) -> torch.Tensor:
        """Run P-Net over the pyramid; return squared candidates float32 ``[N, 5]``."""
        height, width = int(img.shape[2]), int(img.shape[3])
        per_scale: list[torch.Tensor] = []
        for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
            size = (int(height * scale + 1), int(width * scale + 1))
            level = (imresample(img, size) - 127.5) * 0.0078125
            reg, prob = self.pnet(level)
            cand = generate_bounding_boxes(reg[0], prob[0, 1], scale, self.thresholds[0])
            per_scale.append(cand[nms(cand[:, :4], cand[:, 4], 0.5, "union")])
        if not per_scale:
            return img.new_empty((0, 5))
        boxes = torch.cat(per_scale, dim=0)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, "union")]
        logger.debug("P-Net: %d candidates over %d scales", boxes.shape[0], len(per_scale))
        reg_w = boxes[:, 2] - boxes[:, 0]
        reg_h = boxes[:, 3] - boxes[:, 1]
        regressed = torch.stack(
            [
                boxes[:, 0] + boxes[:, 5] * reg_w,
                boxes[:, 1] + boxes[:, 6] * reg_h,
                boxes[:, 2] + boxes[:, 7] * reg_w,
                boxes[:, 3] + boxes[:, 8] * reg_h,
                boxes[:, 4],
            ],
            dim=1,
        )
        return rerec(regressed)

    def _stage_rnet(self, img: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Refine ``boxes`` float32 ``[N, 5]`` with R-Net; return squared boxes ``[M, 5]``."""
        crops, valid = crop_boxes(img, boxes, 24)
        boxes = boxes[valid]
        reg, prob = self._run_batched(self.rnet, crops)[:2]
        score = prob[:, 1]
        keep = score > self.thresholds[1]
        boxes = torch.cat([boxes[keep, :4], score[keep].unsqueeze(1)], dim=1)
        reg = reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "union")
        logger.debug("R-Net: %d of %d boxes kept", pick.shape[0], valid.shape[0])
        return rerec(bbreg(boxes[pick], reg[pick]))

    def _stage_onet(
        self, img: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``boxes`` float32 ``[N, 5]`` with O-Net; return final boxes and landmarks.

        Returns:
            ``(boxes, points)``: float32 ``[K, 5]`` (x1, y1, x2, y2, score) and ``[K, 5, 2]``.
        """
        crops, valid = crop_boxes(img, boxes, 48)
        boxes = boxes[valid]
        reg, marks, prob = self._run_batched(self.onet, crops)
        score = prob[:, 1]
        keep = score > self.thresholds[2]
        boxes = torch.cat([boxes[keep, :4], score[keep].unsqueeze(1)], dim=1)
        reg, marks = reg[keep], marks[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        h = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        points_x = w * marks[:, :5] + boxes[:, 0:1] - 1
        points_y = h * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack([points_x, points_y], dim=2)
        boxes = bbreg(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
        logger.debug("O-Net: %d of %d boxes kept", pick.shape[0], valid.shape[0])
        return boxes[pick], points[pick]

    @staticmethod
    def _run_batched(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run ``net`` on ``crops`` ``[N, 3, S, S]`` in chunks of 512; concatenate outputs."""
        outs = [net(crops[i : i + _BATCH]) for i in range(0, max(crops.shape[0], 1), _BATCH)]
        return tuple(torch.cat(parts, dim=0) for parts in zip(*outs, strict=True))
