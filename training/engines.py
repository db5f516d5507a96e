"""What a training step runs: the whole network on augmented crops (:class:`FullEngine`,
the GPU path), or the layers after a frozen trunk on cached trunk outputs
(:class:`CachedEngine`, the CPU path; see :mod:`training.feature_cache`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.augment import AugmentConfig, augment, jpeg_recompress, standardize
from training.evaluate import embed_crops
from training.inception_resnet_v1 import InceptionResnetV1
from training.network import Head


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[None]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def jpeg_copies(
    crops: np.ndarray, cfg: AugmentConfig, seed: int, threads: int = 1
) -> np.ndarray | None:
    """Every crop re-compressed once at a random quality (CPU, OpenCV, in ``threads``), or
    None when JPEG augmentation is off; :class:`FullEngine` picks the copy per sample with
    probability ``cfg.jpeg``."""
    if cfg.jpeg <= 0:
        return None
    rng = np.random.default_rng([seed, 5])
    q = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, len(crops))
    out = np.empty_like(crops)
    bounds = np.linspace(0, len(crops), max(1, threads) + 1).astype(int)

    def part(lo: int, hi: int) -> None:
        out[lo:hi] = jpeg_recompress(crops[lo:hi], q[lo:hi])

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(part, bounds[:-1], bounds[1:]))
    return out


class FullEngine:
    """Every step: crops -> JPEG copy with probability p -> augment -> standardise -> the
    network (bfloat16 autocast and channels-last on CUDA when ``amp``)."""

    def __init__(
        self,
        model: InceptionResnetV1,
        crops: Tensor,
        jpeg: Tensor | None,
        cfg: AugmentConfig,
        amp: bool = True,
    ) -> None:
        self.model, self.crops, self.jpeg, self.cfg = model, crops, jpeg, cfg
        self.device = crops.device
        self.amp = amp
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            # Module.to takes memory_format at run time; torch's stubs leave it out
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, idx: np.ndarray, g: torch.Generator) -> Tensor:
        i = torch.as_tensor(idx, device=self.device)
        x = self.crops[i]
        if self.jpeg is not None:
            pick = torch.rand(len(i), generator=g, device=self.device) < self.cfg.jpeg
            x = torch.where(pick[:, None, None, None], self.jpeg[i], x)
        x = standardize(augment(x, self.cfg, g))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.amp):
            out: Tensor = self.model(x)
            return out

    def embed(self, indices: Sequence[int] | np.ndarray, batch: int = 256) -> np.ndarray:
        self.model.eval()
        return embed_crops(self.model, self.crops, indices, batch, True, self.channels_last)


class CachedEngine:
    """Every step: for each crop of the batch one of its ``V`` cached trunk outputs
    (version 0 the crop, 1 its mirror, 2.. augmented copies) -> the trainable layers."""

    def __init__(self, model: InceptionResnetV1, n_frozen: int, store: np.ndarray) -> None:
        self.model = model
        self.head = Head(model, n_frozen)
        self.store = store  # float16[V, N, *feature_shape], usually a memory map
        self.device = torch.device("cpu")

    def _features(self, version: np.ndarray, idx: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(self.store[version, idx], np.float32))

    def forward(self, idx: np.ndarray, g: torch.Generator) -> Tensor:
        v = torch.randint(0, self.store.shape[0], (len(idx),), generator=g).numpy()
        out: Tensor = self.head(self._features(v, np.asarray(idx)))
        return out

    @torch.no_grad()
    def embed(self, indices: Sequence[int] | np.ndarray, batch: int = 256) -> np.ndarray:
        self.model.eval()
        idx = np.asarray(indices, np.int64)
        out = []
        for lo in range(0, len(idx), batch):
            part = idx[lo : lo + batch]
            zeros, ones = np.zeros(len(part), np.int64), np.ones(len(part), np.int64)
            e = self.head(self._features(zeros, part)) + self.head(self._features(ones, part))
            out.append(F.normalize(e, dim=1))
        return torch.cat(out).numpy()
