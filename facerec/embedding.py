"""Face embeddings on ONNX Runtime: preprocess as the model card says, run in batches,
L2-normalise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from facerec.errors import InvalidArgumentError
from facerec.models import ModelCard
from facerec.runtime import create_session


class FaceEmbedder(Protocol):
    """Anything that turns aligned crops into unit embeddings (ONNX Runtime, Triton)."""

    embedding_size: int
    input_size: int

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``crops`` uint8[N, S, S, 3] RGB -> float32[N, D], each row of unit length."""
        ...


def per_image_standardization(crops: np.ndarray) -> np.ndarray:
    """uint8[N, S, S, 3] -> float32[N, 3, S, S]: ``(x - mean) / max(std, 1 / sqrt(n))``.

    Mean and standard deviation are taken over all pixels and channels of each crop.
    """
    x = crops.astype(np.float32)
    n = x[0].size if len(x) else 1
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=1, dtype=np.float64).astype(np.float32)
    std = flat.std(axis=1, dtype=np.float64).astype(np.float32)
    std = np.maximum(std, np.float32(1.0 / np.sqrt(n)))
    x -= mean[:, None, None, None]
    x /= std[:, None, None, None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def rgb_float(crops: np.ndarray) -> np.ndarray:
    """uint8[N, S, S, 3] -> float32[N, 3, S, S]: the RGB values 0..255 as they are (for a
    network that normalises inside its graph, such as dlib's ResNet)."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)


PREPROCESSORS = {
    "per_image_standardization": per_image_standardization,
    "rgb_float": rgb_float,
}
"""A model card's ``preprocessing`` name -> what turns uint8 NHWC crops into its raw graph's
float32 NCHW input (the serving graphs do the same inside, :mod:`export.serving_graph`)."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` float32[N, D] scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


class OnnxEmbedder:
    """In-process embedder of one model; runs at most ``max_batch`` crops per call.

    ``model`` is either a serving graph (uint8 crops in, unit embeddings out: what the
    pipeline and Triton run, so both compute the same thing) or a raw exported graph
    (standardised float input), which gets the model card's preprocessing here.
    """

    def __init__(
        self, model: Path, card: ModelCard, threads: int | None = None, max_batch: int = 32
    ) -> None:
        self.card = card
        self.embedding_size = card.embedding_size
        self.input_size = card.input_size
        self.max_batch = max_batch
        self._preprocess = PREPROCESSORS[card.preprocessing]
        self._session = create_session(model, threads)
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._raw = first.type != "tensor(uint8)"

    def embed(self, crops: np.ndarray) -> np.ndarray:
        def run(batch: np.ndarray) -> np.ndarray:
            feed = self._preprocess(batch) if self._raw else np.ascontiguousarray(batch)
            return np.asarray(self._session.run(None, {self._input: feed})[0])

        out = embed_in_batches(crops, self.input_size, self.embedding_size, self.max_batch, run)
        return l2_normalise(out) if self._raw else out


def embed_in_batches(
    crops: np.ndarray,
    input_size: int,
    embedding_size: int,
    max_batch: int,
    run: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Check ``crops`` (uint8[N, S, S, 3]) and embed them ``max_batch`` at a time with
    ``run`` (one batch in, float32[n, D] out): what every :class:`FaceEmbedder` does."""
    s = input_size
    if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
        raise InvalidArgumentError(
            f"crops must be uint8[N, {s}, {s}, 3], got {crops.dtype}{list(crops.shape)}"
        )
    out = np.empty((len(crops), embedding_size), np.float32)
    for lo in range(0, len(crops), max_batch):
        batch = crops[lo : lo + max_batch]
        out[lo : lo + len(batch)] = run(batch)
    return out


def embed_with_flip(embedder: FaceEmbedder, crops: np.ndarray, flip: bool) -> np.ndarray:
    """Embeddings of ``crops``; with ``flip``, the mirror's unit vector is added and the sum
    renormalised (test-time augmentation). An embedder of several parts (a fused model's,
    :class:`facerec.fusion.FusedEmbedder`) mirrors each part's crop itself."""
    own = getattr(embedder, "embed_flipped", None)
    if own is not None:
        return np.asarray(own(crops, flip))
    if not flip or len(crops) == 0:
        return embedder.embed(crops)
    both = embedder.embed(np.concatenate([crops, crops[:, :, ::-1]]))
    n = len(crops)
    return l2_normalise(both[:n] + both[n:])
