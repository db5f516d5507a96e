"""Fused models: two embedders whose scores are fused, as one model with one embedding.

A fused model ``A+B`` (``facenet128+dlib128``) has a card whose ``fusion`` section names
its parts, each part's score normalisation (the mean and standard deviation of its cosine
over different-person pairs: its impostor distribution) and the weight ``w`` of the
z-score fusion ``s = w·z_A + (1 − w)·z_B``, ``z = (cos − mean) / std``.

**The embedding.** The fused embedding is the concatenation ``[√a·e_A, √b·e_B]`` of the
parts' unit embeddings with ``a + b = 1``: a unit vector whose cosine with another is
exactly ``a·cos_A + b·cos_B``. With ``a ∝ w / std_A`` and ``b ∝ (1 − w) / std_B``
(:meth:`FusionSpec.part_weights`) that cosine is an increasing affine function of the
normalised fused score ``s`` (:meth:`FusionSpec.normalised`), so everything downstream of
an embedding (1:1 thresholds, open-set thresholds per gallery size, centroids, the
benchmarks, sealing, the vector index) works on it unchanged, with its own calibration.

**The crops.** Each part is aligned with its own card's template and size; the parts'
crops travel packed side by side in one uint8 array (:func:`pack_crops`: height the
largest part's size, width the sum of the sizes, each part top-left in its column), so
code that aligns with ``pipeline.align`` and embeds with ``pipeline.embed`` later carries
them unchanged. :class:`FusedEmbedder` unpacks them and embeds each part (mirroring each
part's crop on its own for flip augmentation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.alignment import AlignMethod, align_faces, crop_box
from facerec.detection.types import Detections
from facerec.embedding import FaceEmbedder, embed_with_flip
from facerec.errors import InvalidArgumentError

if TYPE_CHECKING:
    from facerec.models import ModelCard


@dataclass(frozen=True)
class PartNormalisation:
    """One part's impostor cosine distribution: mean and standard deviation."""

    impostor_mean: float
    impostor_std: float

    def z(self, cosine: np.ndarray | float) -> np.ndarray | float:
        return (cosine - self.impostor_mean) / self.impostor_std


@dataclass(frozen=True)
class FusionSpec:
    """A fused card's ``fusion`` section: ``parts`` (two names), ``normalisation`` (one
    :class:`PartNormalisation` per part, in order) and ``weight`` (``w`` of part A's
    z-score; part B's is ``1 − w``)."""

    parts: tuple[str, ...]
    normalisation: tuple[PartNormalisation, ...]
    weight: float

    def __post_init__(self) -> None:
        if len(self.parts) != 2 or len(self.normalisation) != 2:
            raise InvalidArgumentError("a fused model has exactly two parts")
        if not 0.0 < self.weight < 1.0:
            raise InvalidArgumentError(f"fusion weight {self.weight} is not in (0, 1)")
        if any(n.impostor_std <= 0 for n in self.normalisation):
            raise InvalidArgumentError("a part's impostor std must be positive")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FusionSpec:
        parts = tuple(str(p) for p in raw["parts"])
        norm = raw["score_normalisation"]
        return cls(
            parts,
            tuple(
                PartNormalisation(float(norm[p]["impostor_mean"]), float(norm[p]["impostor_std"]))
                for p in parts
            ),
            float(raw["weight"]),
        )

    def with_weight(self, weight: float) -> FusionSpec:
        return FusionSpec(self.parts, self.normalisation, weight)

    def part_weights(self) -> tuple[float, float]:
        """``(a, b)``: ``a ∝ w / std_A``, ``b ∝ (1 − w) / std_B``, ``a + b = 1``."""
        sa, sb = (n.impostor_std for n in self.normalisation)
        ra, rb = self.weight / sa, (1.0 - self.weight) / sb
        return ra / (ra + rb), rb / (ra + rb)

    def normalised(self, cosine: np.ndarray | float) -> np.ndarray | float:
        """The normalised fused score ``w·z_A + (1 − w)·z_B`` of a fused cosine
        ``a·cos_A + b·cos_B`` (an increasing affine map)."""
        (ma, sa), (mb, sb) = ((n.impostor_mean, n.impostor_std) for n in self.normalisation)
        w = self.weight
        scale = w / sa + (1.0 - w) / sb
        return scale * cosine - w * ma / sa - (1.0 - w) * mb / sb


def fused_sha256(parts: Sequence[ModelCard], weights: Sequence[float]) -> str:
    """The fused model's weights hash: SHA-256 of its parts' identities and weights (six
    decimals), so that another part or another weighting is another identity."""
    doc = {
        "parts": [p.identity for p in parts],
        "weights": [round(float(w), 6) for w in weights],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def pack_crops(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The parts' crops uint8[K, S_i, S_i, 3] side by side: uint8[K, max S_i, sum S_i, 3],
    part i in rows ``[0, S_i)`` of its column, zeros below it."""
    height = max(c.shape[1] for c in parts)
    width = sum(c.shape[2] for c in parts)
    out = np.zeros((len(parts[0]), height, width, 3), np.uint8)
    x = 0
    for crops in parts:
        s = crops.shape[1]
        out[:, :s, x : x + s] = crops
        x += s
    return out


def unpack_crops(packed: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """The parts' crops (views) of packed crops, the inverse of :func:`pack_crops`."""
    height, width = max(sizes), sum(sizes)
    if packed.ndim != 4 or packed.shape[1:] != (height, width, 3) or packed.dtype != np.uint8:
        raise InvalidArgumentError(
            f"fused crops must be uint8[N, {height}, {width}, 3] (the parts' crops side by "
            f"side), got {packed.dtype}{list(packed.shape)}"
        )
    out, x = [], 0
    for s in sizes:
        out.append(packed[:, :s, x : x + s])
        x += s
    return out


def align_card(
    image: np.ndarray, detections: Detections, method: AlignMethod, card: ModelCard
) -> np.ndarray:
    """Every detected face's crop for ``card``'s model: uint8[K, S, S, 3], or for a fused
    model each part's crop (its own template and size) packed side by side."""
    if not card.parts:
        return align_faces(
            image, detections, method, card.template, card.box_margin, card.input_size
        )
    return pack_crops([align_card(image, detections, method, p) for p in card.parts])


def whole_image_crop(image: np.ndarray, card: ModelCard) -> np.ndarray:
    """The whole image as one crop for ``card``'s model (no margin), uint8[1, ...]: what a
    benchmark embeds for an image in which no face was found."""
    if card.parts:
        return pack_crops([whole_image_crop(image, p) for p in card.parts])
    h, w = image.shape[:2]
    box = np.array([0, 0, w, h], np.float32)
    return crop_box(image, box, 0, card.input_size)[None]


class FusedEmbedder:
    """A fused model's embedder over its parts' embedders (any :class:`FaceEmbedder`):
    packed crops in, ``[√a·e_A, √b·e_B]`` out (unit rows)."""

    def __init__(self, parts: Sequence[FaceEmbedder], weights: Sequence[float]) -> None:
        if len(parts) != len(weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise InvalidArgumentError("a fused embedder needs one weight per part, summing to 1")
        self.parts = list(parts)
        self.sizes = [p.input_size for p in parts]
        self.weights = tuple(float(w) for w in weights)
        self.input_size = max(self.sizes)
        self.embedding_size = sum(p.embedding_size for p in parts)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """float32[N, D_A + D_B] of packed crops, no flip augmentation."""
        return self.embed_flipped(crops, flip=False)

    def embed_flipped(self, crops: np.ndarray, flip: bool) -> np.ndarray:
        """As :meth:`embed`; with ``flip`` each part's embedding is flip-averaged on its
        own crop (:func:`facerec.embedding.embed_with_flip`) before the weighting."""
        parts = unpack_crops(crops, self.sizes)
        embedded = [embed_with_flip(p, c, flip) for p, c in zip(self.parts, parts, strict=True)]
        return fuse_embeddings(embedded, self.weights)

    def ready(self) -> bool:
        return all(getattr(p, "ready", lambda: True)() for p in self.parts)


def split_embeddings(
    embeddings: np.ndarray, sizes: Sequence[int], weights: Sequence[float]
) -> list[np.ndarray]:
    """The parts' unit embeddings of fused embeddings (weights ``weights``, part
    embedding sizes ``sizes``): the inverse of the weighting."""
    out, x = [], 0
    for d, w in zip(sizes, weights, strict=True):
        out.append(np.asarray(embeddings[:, x : x + d] / np.sqrt(w), np.float32))
        x += d
    return out


def fuse_embeddings(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``[√a·e_A, √b·e_B]`` of the parts' unit embeddings."""
    return np.concatenate(
        [np.sqrt(w, dtype=np.float32) * p for p, w in zip(parts, weights, strict=True)], axis=1
    ).astype(np.float32)


@dataclass(frozen=True)
class IndexSpace:
    """What a model's embeddings put in a vector index, and how: the one rule for every
    vector that enters an index (insert and search alike).

    A single model indexes its embedding as it is. A fused model indexes only its first
    part's embedding (FaceNet's slice of ``[√a·e_A, √b·e_B]``, renormalised to unit
    length): the index's nearest faces are the first stage of a two-stage search, whose
    candidates are then re-ranked by the fused score over the full templates, kept sealed
    in the system of record. The second part's embedding is never indexed."""

    embedding_size: int  # the width of the model's embeddings
    size: int  # the width of the indexed vectors: the first ``size`` dims, renormalised

    def __post_init__(self) -> None:
        if not 0 < self.size <= self.embedding_size:
            raise InvalidArgumentError(
                f"an index of {self.size}-d vectors for {self.embedding_size}-d embeddings"
            )

    @classmethod
    def identity(cls, size: int) -> IndexSpace:
        """The index of a single model's ``size``-d embeddings, as they are."""
        return cls(size, size)

    @property
    def projected(self) -> bool:
        """Whether the indexed vector is a projection (a fused model's first part)."""
        return self.size != self.embedding_size

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """float32[N, size] indexed vectors of float32[N, embedding_size] embeddings (unit
        rows in, unit rows out)."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise InvalidArgumentError(
                f"the index takes {self.embedding_size}-d embeddings, got {list(embeddings.shape)}"
            )
        if not self.projected:
            return embeddings
        head = embeddings[:, : self.size]
        norms = np.linalg.norm(head, axis=1, keepdims=True)
        return np.asarray(head / np.maximum(norms, 1e-12), np.float32)


def index_space(card: ModelCard) -> IndexSpace:
    """The index of ``card``'s model (:class:`IndexSpace`): its embeddings as they are, or
    for a fused model its first part's embedding."""
    if not card.parts:
        return IndexSpace.identity(card.embedding_size)
    return IndexSpace(card.embedding_size, card.parts[0].embedding_size)
