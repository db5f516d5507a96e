"""The steps of ``facerec models`` that need PyTorch: convert, export, parity, quantise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.mtcnn_graph import optimise_mtcnn
from export.mtcnn_weights import load_mtcnn
from export.quantize import quantize_embedder
from export.serving_graph import wrap_embedder
from facerec.alignment import align_faces
from facerec.detection.mtcnn import MTCNNDetector
from facerec.detection.types import Detections
from facerec.embedding import OnnxEmbedder, l2_normalise, per_image_standardization
from facerec.models import ONNX_FILES, ModelCard, embedder_file
from facerec.selection import primary_face
from training.facenet_keras import load_facenet_keras
from training.inception_resnet_v1 import InceptionResnetV1
from training.mtcnn import ONet, PNet, RNet
from training.mtcnn_reference import EagerMTCNN
from training.onnx_export import export_onnx

log = logging.getLogger(__name__)

EMBEDDING_COSINE_MIN = 0.99999
FP16_COSINE_MIN = 0.9999
"""The least cosine between an FP16 embedder's unit embeddings and FP32's on the bundled
faces (FaceNet's FP16 measures 0.999998; ``dlib128``'s build fails below it)."""
DETECTION_TOLERANCE_PX = 0.5


class ParityError(RuntimeError):
    """An exported model disagrees with its PyTorch source beyond tolerance."""


@dataclass
class Nets:
    facenet: InceptionResnetV1
    pnet: PNet
    rnet: RNet
    onet: ONet


def convert(weights: dict[str, Path]) -> Nets:
    facenet = load_facenet_keras(weights["facenet_keras.h5"])
    pnet, rnet, onet = load_mtcnn(weights["pnet.pt"], weights["rnet.pt"], weights["onet.pt"])
    return Nets(facenet.eval(), pnet.eval(), rnet.eval(), onet.eval())


def export_all(nets: Nets, out_dir: Path) -> None:
    meta = {"producer": "facerec models"}
    export_onnx(
        nets.facenet,
        out_dir / ONNX_FILES["facenet128-fp32"],
        torch.zeros(2, 3, 160, 160),
        "image",
        ["embedding"],
        {"image": {0: "batch"}, "embedding": {0: "batch"}},
        {**meta, "preprocessing": "per_image_standardization", "embedding_size": "128"},
    )
    export_onnx(
        nets.pnet,
        out_dir / ONNX_FILES["pnet"],
        torch.zeros(1, 3, 64, 48),
        "image",
        ["reg", "prob"],
        {
            "image": {0: "batch", 2: "height", 3: "width"},
            "reg": {0: "batch", 2: "map_height", 3: "map_width"},
            "prob": {0: "batch", 2: "map_height", 3: "map_width"},
        },
        meta,
        optimise_mtcnn,
    )
    export_onnx(
        nets.rnet,
        out_dir / ONNX_FILES["rnet"],
        torch.zeros(2, 3, 24, 24),
        "image",
        ["reg", "prob"],
        {"image": {0: "batch"}, "reg": {0: "batch"}, "prob": {0: "batch"}},
        meta,
        optimise_mtcnn,
    )
    export_onnx(
        nets.onet,
        out_dir / ONNX_FILES["onet"],
        torch.zeros(2, 3, 48, 48),
        "image",
        ["reg", "landmarks", "prob"],
        {n: {0: "batch"} for n in ("image", "reg", "landmarks", "prob")},
        meta,
        optimise_mtcnn,
    )


def face_crops(
    images: list[np.ndarray], detections: list[Detections], card: ModelCard
) -> np.ndarray:
    """Both alignments of each image's primary face, and their mirrors: uint8[4N, S, S, 3]."""
    crops = []
    for image, det in zip(images, detections, strict=True):
        if len(det) == 0:
            continue
        one = det.take([primary_face(det, image.shape[0], image.shape[1])])
        for method in ("similarity", "box"):
            crops.append(
                align_faces(image, one, method, card.template, card.box_margin, card.input_size)
            )
    both = np.concatenate(crops)
    return np.concatenate([both, both[:, :, ::-1]])


def _match_detections(ref: tuple[np.ndarray, ...], ours: Any) -> float:
    """Largest coordinate difference (px) between two detections of one image."""
    boxes, scores, marks = ref
    if len(boxes) != len(ours):
        raise ParityError(f"reference found {len(boxes)} faces, ONNX Runtime {len(ours)}")
    if len(boxes) == 0:
        return 0.0
    a, b = np.argsort(-scores), np.argsort(-ours.scores)
    return float(
        max(
            np.abs(boxes[a] - ours.boxes[b]).max(),
            np.abs(marks[a] - ours.landmarks[b]).max(),
        )
    )


def check_parity(
    nets: Nets, out_dir: Path, images: list[np.ndarray], card: ModelCard
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Compare every exported graph with its PyTorch source on real faces; raise if off.

    Returns the figures, the face crops used (for the INT8 calibration) and PyTorch's unit
    embeddings of them (the reference for the other precisions).
    """
    detector = MTCNNDetector(
        out_dir / ONNX_FILES["pnet"], out_dir / ONNX_FILES["rnet"], out_dir / ONNX_FILES["onet"]
    )
    eager = EagerMTCNN(nets.pnet, nets.rnet, nets.onet)
    ours = detector.detect(images)
    worst_px = max(
        _match_detections(eager.detect(img), det) for img, det in zip(images, ours, strict=True)
    )
    if worst_px > DETECTION_TOLERANCE_PX:
        raise ParityError(f"MTCNN boxes/landmarks differ by {worst_px:.3f} px")

    crops = face_crops(images, ours, card)
    figures, reference = embedder_parity(nets.facenet, out_dir, crops, card)
    return {"images": len(images), "mtcnn_max_abs_diff_px": worst_px, **figures}, crops, reference


def embedder_parity(
    facenet: InceptionResnetV1, out_dir: Path, crops: np.ndarray, card: ModelCard
) -> tuple[dict[str, Any], np.ndarray]:
    """The exported FP32 embedder of ``card`` against its PyTorch source on ``crops``;
    raises :class:`ParityError` below :data:`EMBEDDING_COSINE_MIN`. Returns the figures
    and PyTorch's unit embeddings (the reference for the other precisions)."""
    embedder = OnnxEmbedder(out_dir / embedder_file(card.name, "fp32"), card)
    ort_emb = embedder.embed(crops)
    with torch.inference_mode():
        torch_emb = facenet.eval()(torch.from_numpy(per_image_standardization(crops))).numpy()
    cosine = (ort_emb * torch_emb).sum(axis=1)
    if cosine.min() < EMBEDDING_COSINE_MIN:
        raise ParityError(f"embedding cosine {cosine.min():.7f} < {EMBEDDING_COSINE_MIN}")
    figures = {
        "embedding_crops": len(crops),
        "embedding_cosine_min": float(cosine.min()),
        "embedding_max_abs_diff": float(np.abs(ort_emb - torch_emb).max()),
    }
    return figures, l2_normalise(torch_emb)


def quantise(
    out_dir: Path, crops: np.ndarray, card: ModelCard, reference: np.ndarray
) -> dict[str, Any]:
    """INT8 embedder calibrated on ``crops`` (uint8 faces); report its agreement with FP32
    and with the PyTorch model (``reference``: its unit embeddings of ``crops``)."""
    fp32 = out_dir / embedder_file(card.name, "fp32")
    int8, float_layers = quantize_embedder(
        fp32, out_dir / embedder_file(card.name, "int8"), per_image_standardization(crops), "image"
    )
    a = OnnxEmbedder(fp32, card).embed(crops)
    b = OnnxEmbedder(int8, card).embed(crops)
    cosine = (a * b).sum(axis=1)
    return {
        "calibration_crops": len(crops),
        "method": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
        "float_layers": float_layers,
        "cosine_vs_fp32_min": float(cosine.min()),
        "cosine_vs_fp32_mean": float(cosine.mean()),
        "cosine_vs_pytorch_min": float((b * reference).sum(axis=1).min()),
    }


def half_precision(
    out_dir: Path, crops: np.ndarray, card: ModelCard, reference: np.ndarray
) -> dict[str, Any]:
    """FP16 embedder (weights and activations, float32 input and output kept); report its
    agreement with FP32 and with the PyTorch model on ``crops``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32 = out_dir / embedder_file(card.name, "fp32")
    fp16 = out_dir / embedder_file(card.name, "fp16")
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    tmp = fp16.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(fp16)
    a = OnnxEmbedder(fp32, card).embed(crops)
    b = OnnxEmbedder(fp16, card).embed(crops)
    cosine = (a * b).sum(axis=1)
    return {
        "method": "float16 weights and activations (onnxruntime float16 converter)",
        "cosine_vs_fp32_min": float(cosine.min()),
        "cosine_vs_fp32_mean": float(cosine.mean()),
        "cosine_vs_pytorch_min": float((b * reference).sum(axis=1).min()),
    }


# Standardising inside the graph (float32) instead of in numpy (float64) moves some INT8
# input values across a quantisation step: INT8 agrees to 0.9994-0.9996, the others exactly.
SERVING_COSINE_MIN = {"fp32": EMBEDDING_COSINE_MIN, "fp16": EMBEDDING_COSINE_MIN, "int8": 0.999}


def serving_graphs(
    out_dir: Path,
    crops: np.ndarray,
    card: ModelCard,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
) -> dict[str, Any]:
    """The serving embedders (uint8 crops in, unit embeddings out) of ``precisions``, each
    with the card's preprocessing inside and checked against its raw graph with the
    preprocessing in numpy."""
    figures: dict[str, Any] = {}
    for precision in precisions:
        raw = out_dir / embedder_file(card.name, precision)
        served = wrap_embedder(
            raw,
            out_dir / embedder_file(card.name, precision, serving=True),
            card.input_size,
            card.embedding_size,
            card.preprocessing,
        )
        ours = OnnxEmbedder(served, card).embed(crops)
        cosine = (ours * OnnxEmbedder(raw, card).embed(crops)).sum(axis=1)
        floor = SERVING_COSINE_MIN[precision]
        if cosine.min() < floor:
            raise ParityError(f"{served.name}: cosine {cosine.min():.7f} < {floor}")
        figures[precision] = {"cosine_vs_raw_graph_min": float(cosine.min())}
    return figures
