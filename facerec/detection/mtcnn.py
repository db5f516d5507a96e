"""MTCNN (P-Net pyramid, R-Net, O-Net) on ONNX Runtime with numpy/OpenCV glue.

The algorithm follows the published MTCNN cascade as run by facenet-pytorch, so the
converted weights give the same boxes: P-Net over an image pyramid (per-scale NMS 0.5,
cross-scale NMS 0.7), box regression and squaring, R-Net on 24x24 crops (NMS 0.7), O-Net
on 48x48 crops with landmarks (NMS 0.7 over the smaller area). Candidates from every
image of a batch share one R-Net and one O-Net call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from facerec.detection.nms import nms
from facerec.detection.types import Detections
from facerec.errors import InvalidArgumentError
from facerec.imaging.resample import AreaSampler
from facerec.runtime import create_session

_STRIDE = 2
_CELL = 12
# Past these sizes a call's activations leave the core's cache and every pixel or crop
# costs more (one thread, before the channel padding: P-Net 107 us per 1000 px at 150x150,
# 205 at 1000x600; R-Net 85 us per crop in batches of 16, 116 in batches of 256; O-Net
# 414 us in batches of 8, 516 in 64; `python -m perf.detector` measures the current
# graphs). Larger inputs are cut into calls of about these sizes.
_PNET_CALL_PIXELS = 40_000
_REFINE_CALL_CROPS = {24: 16, 48: 8}


@dataclass(frozen=True)
class MTCNNConfig:
    """Detection settings: smallest face in pixels, per-stage score thresholds, pyramid step.

    ``resample``: ``"exact"`` reproduces the reference implementation's area resampling
    (identical boxes); ``"opencv"`` resamples the pyramid with OpenCV's INTER_AREA.
    """

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    resample: str = "exact"

    def __post_init__(self) -> None:
        if self.min_face_size < 12:
            raise InvalidArgumentError("min_face_size must be at least 12 px")
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise InvalidArgumentError("thresholds must lie in [0, 1]")
        if self.resample not in ("exact", "opencv"):
            raise InvalidArgumentError("resample must be 'exact' or 'opencv'")
        if not 0.1 <= self.factor < 1.0:
            raise InvalidArgumentError("factor must lie in [0.1, 1)")


def pyramid_scales(height: int, width: int, config: MTCNNConfig) -> list[float]:
    """Scales at which P-Net (a 12 px detector) sees faces of ``min_face_size`` and up."""
    scale = 12.0 / config.min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= config.factor
        side *= config.factor
    return scales


def pnet_map_size(side: int) -> int:
    """P-Net's output cells along an input side of ``side`` pixels (3x3 conv, 2x2 ceil
    max-pool, two 3x3 convs)."""
    return (side - 1) // 2 - 4


def _spans(cells: int, per_span: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + per_span, cells)) for lo in range(0, cells, per_span)]


def _pnet_tiles(height: int, width: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row and column spans of P-Net output cells, each tile about ``_PNET_CALL_PIXELS``
    input pixels. Output cells ``[a, b)`` read input ``[2a, 2b + 10)``: tiles start on
    even pixels, so every cell sees exactly the pixels (and max-pool windows) it sees in
    the whole image."""
    rows, cols = pnet_map_size(height), pnet_map_size(width)
    if height * width <= _PNET_CALL_PIXELS:
        return [(0, rows)], [(0, cols)]
    tile_cols = min(cols, max(16, (int(_PNET_CALL_PIXELS**0.5) - 10) // 2))
    tile_rows = max(1, (_PNET_CALL_PIXELS // (2 * tile_cols + 10) - 10) // 2)
    return _spans(rows, tile_rows), _spans(cols, tile_cols)


def _normalise(x: np.ndarray) -> np.ndarray:
    """float32[..., H, W, 3] in 0..255 -> the nets' input range, NCHW."""
    x = (x.astype(np.float32, copy=False) - 127.5) * 0.0078125
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box (float[K, >=4]) to a square around its centre."""
    out = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply box offsets ``reg`` float[K, 4], scaled by the box size: ``x2 - x1 + 1`` for
    R-/O-Net (``inclusive``), ``x2 - x1`` for P-Net, as the reference does."""
    out = boxes.copy()
    one = 1 if inclusive else 0
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _crops(sampler: AreaSampler, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each box out of the image (clipped to it) and resample it to ``size``.

    Box corners are truncated and read as 1-based inclusive pixels, as the reference does.
    Returns float32[M, size, size, 3] and the indices (into ``boxes``) of the M boxes that
    kept a non-empty area.
    """
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1 = np.maximum(b[:, 0], 1)
    y1 = np.maximum(b[:, 1], 1)
    x2 = np.minimum(b[:, 2], sampler.width)
    y2 = np.minimum(b[:, 3], sampler.height)
    v = np.flatnonzero((x2 > x1 - 1) & (y2 > y1 - 1))
    return sampler.crops(x1[v] - 1, y1[v] - 1, x2[v], y2[v], size), v


class MTCNNDetector:
    """The in-process :class:`~facerec.detection.types.FaceDetector`."""

    def __init__(
        self,
        pnet: Path,
        rnet: Path,
        onet: Path,
        config: MTCNNConfig | None = None,
        threads: int | None = None,
    ) -> None:
        self.config = config or MTCNNConfig()
        self._pnet = create_session(pnet, threads)
        self._rnet = create_session(rnet, threads)
        self._onet = create_session(onet, threads)

    @staticmethod
    def _run(session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
        name = session.get_inputs()[0].name
        return [np.asarray(o) for o in session.run(None, {name: x})]

    def _resized(self, image: np.ndarray, sampler: AreaSampler, hs: int, ws: int) -> np.ndarray:
        if self.config.resample == "exact":
            return sampler.resize(hs, ws)
        return cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _proposals(
        self, images: Sequence[np.ndarray], samplers: Sequence[AreaSampler]
    ) -> list[np.ndarray]:
        """Stage 1: P-Net candidates per image, float32[K, 5] (x1, y1, x2, y2, score),
        regressed and squared. Images of one size share one P-Net call per pyramid level."""
        found: list[list[np.ndarray]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(i)
        for (h, w), same_size in groups.items():
            for scale in pyramid_scales(h, w, self.config):
                hs, ws = int(h * scale + 1), int(w * scale + 1)
                per_call = max(1, _PNET_CALL_PIXELS // (hs * ws))
                for lo in range(0, len(same_size), per_call):
                    members = same_size[lo : lo + per_call]
                    level = np.stack(
                        [self._resized(images[i], samplers[i], hs, ws) for i in members]
                    )
                    self._scan_level(level, members, scale, found)
        return [self._merge_levels(f) for f in found]

    def _scan_level(
        self, level: np.ndarray, members: list[int], scale: float, found: list[list[np.ndarray]]
    ) -> None:
        """Run P-Net on one pyramid level of several images; append each image's cells."""
        threshold = self.config.thresholds[0]
        reg, prob = self._pnet_maps(_normalise(level))
        for row, i in enumerate(members):
            score = prob[row, 1]
            ys, xs = np.nonzero(score >= threshold)
            if ys.size == 0:
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float32)
            top_left = np.floor((_STRIDE * cells + 1) / scale)
            bottom_right = np.floor((_STRIDE * cells + _CELL) / scale)
            cand = np.concatenate(
                [top_left, bottom_right, score[ys, xs, None], reg[row][:, ys, xs].T],
                axis=1,
            )
            found[i].append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])

    def _pnet_maps(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P-Net's ``reg`` and ``prob`` maps of the NCHW batch ``x``, tile by tile."""
        rows, cols = _pnet_tiles(x.shape[2], x.shape[3])
        if len(rows) == len(cols) == 1:
            reg, prob = self._run(self._pnet, x)
            return reg, prob
        n = x.shape[0]
        reg = np.empty((n, 4, rows[-1][1], cols[-1][1]), np.float32)
        prob = np.empty((n, 2, rows[-1][1], cols[-1][1]), np.float32)
        for r0, r1 in rows:
            for c0, c1 in cols:
                tile = np.ascontiguousarray(x[:, :, 2 * r0 : 2 * r1 + 10, 2 * c0 : 2 * c1 + 10])
                reg[:, :, r0:r1, c0:c1], prob[:, :, r0:r1, c0:c1] = self._run(self._pnet, tile)
        return reg, prob

    @staticmethod
    def _merge_levels(found: list[np.ndarray]) -> np.ndarray:
        """Cross-scale NMS, P-Net's box regression, then squaring."""
        if not found:
            return np.zeros((0, 5), np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        return _square(_regress(boxes[:, :5], boxes[:, 5:9], inclusive=False))

    def _refine(
        self, samplers: Sequence[AreaSampler], boxes: list[np.ndarray], size: int
    ) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """Crop every image's candidates at ``size`` and run the net for that size once."""
        crops, kept = [], []
        for sampler, b in zip(samplers, boxes, strict=True):
            c, valid = _crops(sampler, b, size) if len(b) else (np.zeros((0, size, size, 3)), [])
            crops.append(c)
            kept.append(b[np.asarray(valid, dtype=np.intp)])
        batch = np.concatenate(crops).astype(np.float32)
        net = self._rnet if size == 24 else self._onet
        per_call = _REFINE_CALL_CROPS[size]
        parts = [
            self._run(net, _normalise(batch[lo : lo + per_call]))
            for lo in range(0, len(batch), per_call)
        ]
        outputs = [np.concatenate(o) for o in zip(*parts, strict=True)] if parts else []
        return kept, np.cumsum([0] + [len(k) for k in kept]), outputs

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        cfg = self.config
        samplers = [AreaSampler(img) for img in images]
        boxes = self._proposals(images, samplers)

        # Stage 2: R-Net on 24x24 crops of all images at once.
        boxes, offsets, out = self._refine(samplers, boxes, 24)
        if out:
            reg, prob = out
            for i in range(len(images)):
                lo, hi = offsets[i], offsets[i + 1]
                score = prob[lo:hi, 1]
                keep = score > cfg.thresholds[1]
                b = np.concatenate([boxes[i][keep, :4], score[keep, None]], axis=1)
                r = reg[lo:hi][keep]
                pick = nms(b[:, :4], b[:, 4], 0.7)
                boxes[i] = _square(_regress(b[pick], r[pick]))

        # Stage 3: O-Net on 48x48 crops, with landmarks.
        boxes, offsets, out = self._refine(samplers, boxes, 48)
        results = []
        for i in range(len(images)):
            lo, hi = offsets[i], offsets[i + 1]
            if not out or hi == lo:
                results.append(Detections.empty())
                continue
            reg, marks, prob = out[0][lo:hi], out[1][lo:hi], out[2][lo:hi]
            score = prob[:, 1]
            keep = score > cfg.thresholds[2]
            b = np.concatenate([boxes[i][keep, :4], score[keep, None]], axis=1)
            m = marks[keep]
            bw = (b[:, 2] - b[:, 0] + 1)[:, None]
            bh = (b[:, 3] - b[:, 1] + 1)[:, None]
            points = np.stack(
                [bw * m[:, :5] + b[:, 0:1] - 1, bh * m[:, 5:] + b[:, 1:2] - 1], axis=2
            )
            b = _regress(b, reg[keep])
            pick = nms(b[:, :4], b[:, 4], 0.7, mode="min", pixel_inclusive=True)
            results.append(
                Detections(
                    boxes=b[pick, :4].astype(np.float32),
                    scores=b[pick, 4].astype(np.float32),
                    landmarks=points[pick].astype(np.float32),
                )
            )
        return results
