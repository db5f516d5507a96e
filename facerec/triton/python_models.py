"""The Python-backend models of the Triton repository: detector, aligner, embedder, fuse
(:class:`FuseParts` for a fused model's repository).

Each ``<model>/1/model.py`` of a generated repository is one line that imports its class
from here as ``TritonPythonModel``, so the code Triton runs is the code the in-process
pipeline runs (same MTCNN, same alignment, same ONNX graphs). This module is imported
only inside Triton's Python-backend stub, where ``triton_python_backend_utils`` exists.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from facerec.alignment import ALIGN_METHODS, AlignMethod, align_faces
from facerec.detection.bounded import detect_bounded
from facerec.detection.mtcnn import MTCNNConfig, MTCNNDetector
from facerec.detection.types import Detections
from facerec.embedding import l2_normalise
from facerec.errors import FaceRecError
from facerec.fusion import fuse_embeddings
from facerec.models import load_model_card
from facerec.runtime import create_session

log = logging.getLogger(__name__)


def _parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def _input(request: Any, name: str) -> np.ndarray:
    return np.asarray(pb_utils.get_input_tensor_by_name(request, name).as_numpy())


def _error(exc: Exception) -> Any:
    code = exc.code if isinstance(exc, FaceRecError) else "internal"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{code}: {exc}"))


def _threads(params: dict[str, str]) -> int | None:
    return int(params["threads"]) if params.get("threads", "0") != "0" else None


class Detector:
    """MTCNN: ``IMAGE`` uint8[H, W, 3] RGB -> ``BOXES`` [K, 4], ``SCORES`` [K],
    ``LANDMARKS`` [K, 5, 2]. Every request of one execution shares the R-/O-Net calls."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = _parameters(args)
        here = _version_dir(args)
        self.max_side = int(params.get("max_detect_side", "2048"))
        config = MTCNNConfig(min_face_size=int(params.get("min_face_size", "20")))
        self.detector = MTCNNDetector(
            here / "mtcnn-pnet.onnx",
            here / "mtcnn-rnet.onnx",
            here / "mtcnn-onet.onnx",
            config,
            _threads(params),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        images = [_input(r, "IMAGE") for r in requests]
        try:
            found = detect_bounded(self.detector, images, self.max_side)
        except Exception as exc:
            log.exception("detection failed")
            return [_error(exc) for _ in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("BOXES", det.boxes.astype(np.float32)),
                    pb_utils.Tensor("SCORES", det.scores.astype(np.float32)),
                    pb_utils.Tensor("LANDMARKS", det.landmarks.astype(np.float32)),
                ]
            )
            for det in found
        ]


class Aligner:
    """``IMAGE``, ``BOXES``, ``LANDMARKS`` -> ``CROPS`` uint8[K, S, S, 3], followed by
    their mirror images when the ``flip`` parameter is on (2K crops). ``S`` and the
    template are those of the ``model_card`` parameter's card (``facenet128`` if unset; a
    fused model's repository has one aligner per part, each naming its part's card).

    An image without faces yields one blank crop: Triton refuses a batch of zero for the
    embedder, and :class:`Fuse` drops whatever lies past the faces its ``BOXES`` count.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        params = _parameters(args)
        self.card = load_model_card(params.get("model_card", "facenet128"))
        method = params.get("alignment", "similarity")
        if method not in ALIGN_METHODS:
            raise ValueError(f"alignment must be one of {ALIGN_METHODS}, not {method!r}")
        self.method: AlignMethod = method
        self.flip = params.get("flip", "true") == "true"

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            boxes = _input(r, "BOXES")
            det = Detections(boxes, np.ones(len(boxes), np.float32), _input(r, "LANDMARKS"))
            crops = align_faces(
                _input(r, "IMAGE"),
                det,
                self.method,
                self.card.template,
                self.card.box_margin,
                self.card.input_size,
            )
            if self.flip:
                crops = np.concatenate([crops, crops[:, :, ::-1]])
            if len(crops) == 0:
                crops = np.zeros((1, *crops.shape[1:]), np.uint8)
            out = pb_utils.Tensor("CROPS", np.ascontiguousarray(crops))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses


class Embedder:
    """The serving graph on ONNX Runtime: ``CROPS`` uint8[N, S, S, 3] -> ``EMBEDDINGS``
    float32[N, D] unit rows. Dynamic batching hands it several requests at once; they run
    as one batch."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = _parameters(args)
        self.session = create_session(_version_dir(args) / "model.onnx", _threads(params))

    def execute(self, requests: list[Any]) -> list[Any]:
        crops = [_input(r, "CROPS") for r in requests]
        sizes = [len(c) for c in crops]
        try:
            (emb,) = self.session.run(None, {"CROPS": np.concatenate(crops)})
        except Exception as exc:
            log.exception("embedding failed")
            return [_error(exc) for _ in requests]
        parts = np.split(np.asarray(emb, np.float32), np.cumsum(sizes)[:-1])
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDINGS", p)])
            for p in parts
        ]


def _unflip(raw: np.ndarray, k: int) -> np.ndarray:
    """float32[k, D] of an embedder's raw rows for ``k`` faces: with mirrors (2k rows),
    each face's and its mirror's unit vectors summed and renormalised; else the first k."""
    return l2_normalise(raw[:k] + raw[k : 2 * k]) if k and len(raw) == 2 * k else raw[:k]


class Fuse:
    """``EMBEDDINGS_RAW`` and ``BOXES`` [K, 4] -> ``EMBEDDINGS`` [K, D]. With the aligner's
    flip on, the raw rows are K faces then their K mirrors: each face's two unit vectors
    are summed and renormalised (the in-process flip augmentation); with it off they are
    the K embeddings. Whatever lies past them (the blank crop of an image without faces)
    is dropped."""

    def initialize(self, args: dict[str, Any]) -> None:
        pass

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            try:
                raw = _input(r, "EMBEDDINGS_RAW").astype(np.float32)
                k = len(_input(r, "BOXES"))
                rows = _unflip(raw, k)
            except Exception as exc:  # this request fails alone, as in FuseParts
                log.exception("taking the embeddings failed")
                responses.append(_error(exc))
                continue
            out = pb_utils.Tensor("EMBEDDINGS", np.ascontiguousarray(rows))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses


class FuseParts:
    """A fused model's ``fuse``: ``EMBEDDINGS_RAW_0``, ``EMBEDDINGS_RAW_1`` (each part's
    embedder's raw rows, as :class:`Fuse` takes them) and ``BOXES`` [K, 4] ->
    ``EMBEDDINGS`` float32[K, D_A + D_B]: each part's rows flip-averaged as :class:`Fuse`
    does, then ``[√a·e_A, √b·e_B]`` with the ``part_weights`` parameter's ``a,b``
    (:func:`facerec.fusion.fuse_embeddings`, as the in-process
    :class:`~facerec.fusion.FusedEmbedder`)."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = _parameters(args)
        self.weights = tuple(float(w) for w in params["part_weights"].split(","))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            try:
                k = len(_input(r, "BOXES"))
                parts = [
                    _unflip(_input(r, f"EMBEDDINGS_RAW_{i}").astype(np.float32), k)
                    for i in range(len(self.weights))
                ]
                fused = fuse_embeddings(parts, self.weights)
            except Exception as exc:
                log.exception("fusing the parts' embeddings failed")
                responses.append(_error(exc))
                continue
            out = pb_utils.Tensor("EMBEDDINGS", np.ascontiguousarray(fused))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
