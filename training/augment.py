"""Augmentation of aligned face crops, on whichever device the crops are (CPU or GPU).

A batch of uint8 crops ``[N, S, S, 3]`` becomes float32 ``[N, 3, S, S]`` in 0..255:

- horizontal flip;
- random scale and crop: a zoom in ``scale`` and a shift of up to ``shift`` of the side,
  as one affine resampling (bilinear, replicated border, like the aligner's warp);
- colour jitter: brightness, contrast and saturation factors;
- Gaussian blur with a random sigma;
- JPEG re-compression at a random quality: encoding runs on the CPU (OpenCV), so it is
  applied by :func:`jpeg_recompress` to uint8 crops before this step (the GPU script
  re-compresses every crop once and picks the re-compressed copy per sample).

Every random draw comes from the ``torch.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 turns one off)."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.92, 1.12)
    shift: float = 0.05
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (35, 90)


NO_AUGMENT = AugmentConfig(0.0, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0, (90, 90))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def to_float_nchw(crops: Tensor) -> Tensor:
    """uint8[N, S, S, 3] -> float32[N, 3, S, S] (0..255)."""
    return crops.permute(0, 3, 1, 2).float()


def _geometry(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    n, device = len(x), x.device
    zoom = _uniform(n, cfg.scale[0], cfg.scale[1], g, device)
    flip = torch.where(torch.rand(n, generator=g, device=device) < cfg.flip, -1.0, 1.0)
    tx = _uniform(n, -cfg.shift, cfg.shift, g, device) * 2.0
    ty = _uniform(n, -cfg.shift, cfg.shift, g, device) * 2.0
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = flip / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _colour(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    n, device = len(x), x.device
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g, device)[:, None, None, None]
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g, device)[:, None, None, None]
    s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g, device)[:, None, None, None]
    weights = torch.tensor([0.299, 0.587, 0.114], device=device)[None, :, None, None]
    x = x * b
    gray = (x * weights).sum(dim=1, keepdim=True)
    x = gray + (x - gray) * s
    mean = gray.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0.0, 255.0)


def _blur(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    n, ch, device = len(x), x.shape[1], x.device
    on = torch.rand(n, generator=g, device=device) < cfg.blur
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], g, device)
    radius = 3
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float()[None, :].expand(n, -1)
    kernel = torch.where(on[:, None], kernel, identity)  # [N, 7]
    k = kernel.repeat_interleave(ch, dim=0)  # [N*C, 7]
    flat = x.reshape(1, n * ch, *x.shape[2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, k[:, None, None, :], groups=n * ch)
    flat = F.conv2d(flat, k[:, None, :, None], groups=n * ch)
    return flat.reshape(x.shape)


def augment(crops: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """Augmented copies of ``crops`` uint8[N, S, S, 3] as float32[N, 3, S, S] (0..255).
    ``g`` must live on the crops' device."""
    x = to_float_nchw(crops)
    if len(x) == 0:
        return x
    if cfg.flip or cfg.shift or cfg.scale != (1.0, 1.0):
        x = _geometry(x, cfg, g)
    if cfg.brightness or cfg.contrast or cfg.saturation:
        x = _colour(x, cfg, g)
    if cfg.blur:
        x = _blur(x, cfg, g)
    return x


def standardize(x: Tensor) -> Tensor:
    """Per-image standardisation of float[N, 3, S, S] (0..255), as the serving graph does:
    ``(x - mean) / max(std, 1 / sqrt(3 * S * S))`` over all pixels and channels."""
    flat = x.reshape(len(x), -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False).clamp_min(1.0 / float(np.sqrt(flat.shape[1])))
    return (x - mean[:, None, None, None]) / std[:, None, None, None]


def jpeg_recompress(crops: np.ndarray, qualities: np.ndarray) -> np.ndarray:
    """uint8[N, S, S, 3] RGB crops each encoded as JPEG at its quality and decoded again."""
    out = np.empty_like(crops)
    for i, (crop, q) in enumerate(zip(crops, qualities, strict=True)):
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(q)]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return out


def jpeg_mix(crops: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``crops`` with each one re-compressed with probability ``cfg.jpeg`` (CPU)."""
    if cfg.jpeg <= 0 or len(crops) == 0:
        return crops
    chosen = np.flatnonzero(rng.random(len(crops)) < cfg.jpeg)
    if len(chosen) == 0:
        return crops
    out = crops.copy()
    q = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, len(chosen))
    out[chosen] = jpeg_recompress(crops[chosen], q)
    return out
