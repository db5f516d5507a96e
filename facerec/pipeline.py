"""The recognition pipeline: detect -> select -> align -> embed, over any backend.

Each step is public so a batch job, a tracker or a service can reuse one without the others.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from facerec.alignment import AlignMethod
from facerec.detection.bounded import detect_bounded
from facerec.detection.mtcnn import MTCNNConfig, MTCNNDetector
from facerec.detection.types import Detections, FaceDetector
from facerec.embedding import FaceEmbedder, OnnxEmbedder, embed_with_flip
from facerec.errors import InvalidArgumentError
from facerec.fusion import FusedEmbedder, align_card
from facerec.models import (
    BASE_MODEL,
    PRECISIONS,
    ModelCard,
    check_model_name,
    embedder_key,
    load_model_card,
    model_path,
)
from facerec.runtime import default_threads
from facerec.selection import primary_face

DEFAULT_TRITON_URL = "127.0.0.1:8001"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one pipeline; defaults are the variant measured best on LFW.

    ``workers``: images of a batch are split across this many threads (default: one per
    core), each running ONNX Runtime single-threaded; small convolutions such as MTCNN's
    scale better across images than within one. ``threads`` (intra-op threads per call)
    defaults to 1 when several workers run, else to the number of cores.
    """

    detector: MTCNNConfig = field(default_factory=MTCNNConfig)
    alignment: AlignMethod = "similarity"
    flip: bool = True
    precision: str = "int8"
    threads: int | None = None
    workers: int | None = None
    max_batch: int = 32
    max_detect_side: int = 2048
    model: str = BASE_MODEL

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if self.alignment not in ("similarity", "box"):
            raise InvalidArgumentError(f"unknown alignment {self.alignment!r}")
        if self.max_detect_side < 64:
            raise InvalidArgumentError("max_detect_side must be at least 64 px")
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"unknown precision {self.precision!r}")


@dataclass
class Face:
    """One detected face, with its embedding when one was computed."""

    box: np.ndarray  # float32[4] x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # float32[5, 2]
    embedding: np.ndarray | None = None  # float32[D], unit length

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }
        if with_embedding and self.embedding is not None:
            out["embedding"] = [round(float(v), 6) for v in self.embedding]
        return out


@dataclass
class ImageFaces:
    """The faces kept for one image, and how many the detector found in it."""

    faces: list[Face]
    detected: int


class StageTimer:
    """Wall time per pipeline stage, summed over calls and worker threads (seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1


class FacePipeline:
    """Detection, alignment and embedding over a :class:`FaceDetector` and a
    :class:`FaceEmbedder` (in-process or remote)."""

    def __init__(
        self,
        detector: FaceDetector,
        embedder: FaceEmbedder,
        card: ModelCard,
        config: PipelineConfig,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.card = card
        self.config = config
        self.timer = StageTimer()
        self.workers = max(1, config.workers or default_threads())
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.calibration = card.calibration(config.alignment, config.flip, config.precision)
        self.threshold = self.calibration.threshold  # 1:1 verification default

    @property
    def model_id(self) -> str:
        """The embedding model's identity, ``name:sha`` (:attr:`ModelCard.identity`): store
        it with every template, and compare templates only within one identity."""
        return self.card.identity

    @classmethod
    def local(cls, config: PipelineConfig | None = None, home: Path | None = None) -> FacePipeline:
        """The embedded default: every model in-process on ONNX Runtime."""
        cfg = config or PipelineConfig()
        card = load_model_card(cfg.model, home)
        workers = cfg.workers or default_threads()
        threads = cfg.threads or (1 if workers > 1 else default_threads())
        detector = MTCNNDetector(
            model_path("pnet", home),
            model_path("rnet", home),
            model_path("onet", home),
            cfg.detector,
            threads,
        )
        embedder: FaceEmbedder
        if card.fused:  # each part's own graph of the precision, weighted (facerec.fusion)
            parts = [
                OnnxEmbedder(
                    model_path(embedder_key(p.graphs_name, cfg.precision), home),
                    p,
                    threads,
                    cfg.max_batch,
                )
                for p in card.parts
            ]
            embedder = FusedEmbedder(parts, card.part_weights)
        else:
            embedder = OnnxEmbedder(
                model_path(embedder_key(card.graphs_name, cfg.precision), home),
                card,
                threads,
                cfg.max_batch,
            )
        return cls(detector, embedder, card, cfg)

    @classmethod
    def triton(
        cls, url: str, config: PipelineConfig | None = None, protocol: str = "grpc"
    ) -> FacePipeline:
        """Detector and embedder on a Triton server (``facerec triton serve``); alignment
        and flip augmentation here. Detection settings are the server's (its detector
        config); the precision, and so the calibrated thresholds, follow its embedder. The
        server's repository must serve the model ``config.model`` names (its embedder's
        ``model`` parameter, or for a fused model's repository its ``fused_model``
        parameter, written by ``facerec triton repo --model``), else
        :class:`InvalidArgumentError` (code ``model_mismatch``): a single model's server
        refuses a fused model and a fused model's server a single one. A fused model runs
        a :class:`~facerec.fusion.FusedEmbedder` over its parts' Triton embedders
        (``embedder`` and ``embedder_<part B>``), each checked to serve its part."""
        cfg = config or PipelineConfig()
        card = load_model_card(cfg.model)
        from facerec.triton.client import TritonConnection, TritonDetector, TritonEmbedder
        from facerec.triton.repository import part_model

        connection = TritonConnection(url, protocol)
        parts = card.parts or (card,)
        first = TritonEmbedder(connection, parts[0])
        if first.served_model != cfg.model:
            raise InvalidArgumentError(
                f"the Triton server at {url} serves model {first.served_model!r}, "
                f"not {cfg.model!r} (select it with --model / FACEREC_MODEL, or regenerate "
                "the repository with `facerec triton repo --model NAME`)",
                code="model_mismatch",
            )
        embedders = [first] + [
            TritonEmbedder(connection, p, part_model("embedder", i, p))
            for i, p in enumerate(parts[1:], start=1)
        ]
        for e, p in zip(embedders, parts, strict=True):
            if e.model_name != p.name or e.precision != first.precision:
                raise InvalidArgumentError(
                    f"the Triton server at {url} serves {e.model_name!r} ({e.precision}) "
                    f"as its model {e.model!r}, not {p.name!r} ({first.precision}), "
                    f"a part of {cfg.model!r} (regenerate the repository with "
                    f"`facerec triton repo --model {cfg.model}`)",
                    code="model_mismatch",
                )
        embedder: FaceEmbedder = (
            FusedEmbedder(embedders, card.part_weights) if card.fused else first
        )
        if first.precision != cfg.precision:
            cfg = replace(cfg, precision=first.precision)
        return cls(TritonDetector(connection), embedder, card, cfg)

    @classmethod
    def open(
        cls,
        config: PipelineConfig | None = None,
        home: Path | None = None,
        backend: str | None = None,
        url: str | None = None,
        protocol: str | None = None,
    ) -> FacePipeline:
        """The backend chosen by the arguments, else by ``FACEREC_BACKEND`` (``local``,
        the default, or ``triton`` at ``FACEREC_TRITON_URL`` over
        ``FACEREC_TRITON_PROTOCOL``, gRPC by default)."""
        name = backend or os.environ.get("FACEREC_BACKEND", "local")
        if name == "local":
            return cls.local(config, home)
        if name == "triton":
            return cls.triton(
                url or os.environ.get("FACEREC_TRITON_URL", DEFAULT_TRITON_URL),
                config,
                protocol or os.environ.get("FACEREC_TRITON_PROTOCOL", "grpc"),
            )
        raise InvalidArgumentError(f"FACEREC_BACKEND must be 'local' or 'triton', not {name!r}")

    @property
    def in_process(self) -> bool:
        """Whether detector and embedder both run here on ONNX Runtime (the embedded
        default), so that worker processes can each open their own copy."""
        embedder = self.embedder
        embedders = embedder.parts if isinstance(embedder, FusedEmbedder) else [embedder]
        return isinstance(self.detector, MTCNNDetector) and all(
            isinstance(e, OnnxEmbedder) for e in embedders
        )

    def ready(self) -> bool:
        """Whether the networks can run now: always in-process; for a remote backend,
        whether its server has the models loaded."""
        parts = (self.detector, self.embedder)
        return all(getattr(part, "ready", lambda: True)() for part in parts)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each image, in its own pixel coordinates.

        An image longer than ``config.max_detect_side`` is searched at that size (area
        downscaling) and the boxes and landmarks scaled back, which bounds the detector's
        time and memory on huge photos; faces then need ``min_face_size`` pixels at the
        reduced size. Alignment still cuts from the full-resolution image.
        """
        with self.timer.stage("detect"):
            return detect_bounded(self.detector, images, self.config.max_detect_side)

    def align(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        """uint8[K, S, S, 3] crops of every face in ``detections`` (a fused model's: its
        parts' crops side by side, uint8[K, *card.crop_shape, 3], see :mod:`facerec.fusion`)."""
        with self.timer.stage("align"):
            return align_card(image, detections, self.config.alignment, self.card)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """float32[K, D] unit embeddings of aligned crops (flip-averaged if configured)."""
        with self.timer.stage("embed"):
            return embed_with_flip(self.embedder, crops, self.config.flip)

    def analyze(
        self, images: Sequence[np.ndarray], primary_only: bool = False, embed: bool = True
    ) -> list[ImageFaces]:
        """Faces of each image; with ``primary_only`` at most one (see :func:`primary_face`).

        The batch is split across the worker threads; each part's crops are embedded
        together.
        """
        return self.parallel(lambda part: self._analyze(part, primary_only, embed), images)

    def parallel(self, fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` cut into one contiguous part per worker thread, the parts'
        results joined in order (``fn`` returns one result per item)."""
        if self._pool is None or len(items) < 2:
            return fn(items)
        n = min(self.workers, len(items))
        bounds = np.linspace(0, len(items), n + 1).astype(int)
        parts = [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        return [result for part in self._pool.map(fn, parts) for result in part]

    def _analyze(
        self, images: Sequence[np.ndarray], primary_only: bool, embed: bool
    ) -> list[ImageFaces]:
        detections = self.detect(images)
        chosen: list[Detections] = []
        for image, det in zip(images, detections, strict=True):
            if primary_only and len(det) > 1:
                det = det.take([primary_face(det, image.shape[0], image.shape[1])])
            chosen.append(det)
        embeddings: list[np.ndarray | None] = [None] * len(images)
        if embed:
            crops = [self.align(img, det) for img, det in zip(images, chosen, strict=True)]
            sizes = [len(c) for c in crops]
            if sum(sizes):
                flat = self.embed(np.concatenate(crops))
                splits = np.split(flat, np.cumsum(sizes)[:-1])
                embeddings = list(splits)
        results = []
        for det, found, emb in zip(chosen, detections, embeddings, strict=True):
            faces = [
                Face(
                    det.boxes[k],
                    float(det.scores[k]),
                    det.landmarks[k],
                    None if emb is None else emb[k],
                )
                for k in range(len(det))
            ]
            results.append(ImageFaces(faces, len(found)))
        return results
