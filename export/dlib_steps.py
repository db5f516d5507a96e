"""``facerec models``, second embedder: dlib's face-recognition ResNet to ONNX FP32, FP16, INT8.

Steps (run by :func:`export.setup_models.setup_models` when the ``dlib128`` part of the
manifest is missing or stale):

1. fetch ``face_recognition_models==0.3.0`` (SHA-256 and CC0 licence text pinned) and extract
   the descriptor network and the 5-point shape predictor, never the 68-point one;
2. read the ``.dat`` with the project's reader (:mod:`training.dlib_dat`) into the PyTorch
   module (:mod:`training.dlib_resnet`), every array used once;
3. export ONNX FP32 (input ``image`` float32[N, 3, 150, 150], RGB 0..255, mean subtraction
   and the /256 inside; output ``embedding`` float32[N, 128], dlib's descriptor unnormalised);
4. parity on the 150x150 chips of the bundled faces: ONNX Runtime against PyTorch (cosine
   >= 0.99999) and, where dlib (``dlib-bin``, the export extra) is importable, against dlib's
   own descriptors of dlib's own chips (cosine >= 0.9999);
5. INT8 (static QDQ as for FaceNet, calibrated on those chips and their mirrors) and its
   agreement with FP32;
6. FP16 (FaceNet's conversion, :func:`export.steps.half_precision`) and its agreement with
   FP32 and PyTorch on those chips (FP32 cosine >= :data:`export.steps.FP16_COSINE_MIN`);
7. the serving graphs ``dlib128-{fp32,fp16,int8}-serving.onnx`` (uint8 chips in, unit
   descriptors out: the card's ``rgb_float`` preprocessing inside), each checked against
   its raw graph on those chips (:func:`export.steps.serving_graphs`).

The chips: dlib's (its shape predictor on the project's MTCNN boxes, ``get_face_chip``) when
dlib is here, and the project's own from the MTCNN landmarks (:mod:`export.dlib_align`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.dlib_align import dlib_chips, mtcnn_chip, primary_faces
from export.quantize import quantize_embedder
from export.steps import FP16_COSINE_MIN, half_precision, serving_graphs
from facerec.detection.types import Detections
from facerec.embedding import l2_normalise
from facerec.models import embedder_file, load_model_card
from facerec.runtime import create_session
from training.dlib_dat import EMBEDDING_SIZE, INPUT_SIZE, read_dlib_resnet
from training.dlib_resnet import DlibConversionReport, DlibResNet, convert_dlib_resnet
from training.onnx_export import export_onnx

log = logging.getLogger(__name__)

DLIB_MODEL = "dlib128"
NETWORK_FILE = "dlib_face_recognition_resnet_model_v1.dat"
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
TORCH_COSINE_MIN = 0.99999
DLIB_COSINE_MIN = 0.9999
INT8_COSINE_MIN = 0.99


class DlibParityError(RuntimeError):
    """The exported dlib network disagrees with its source beyond tolerance."""


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def to_input(chips: np.ndarray) -> np.ndarray:
    """uint8[N, 150, 150, 3] RGB chips -> the graph's input float32[N, 3, 150, 150]."""
    return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)


def run_graph(path: Path, chips: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Unit descriptors float32[N, 128] of ``chips`` by the ONNX graph at ``path``."""
    session = create_session(path, threads)
    name = session.get_inputs()[0].name
    out = [
        np.asarray(session.run(None, {name: to_input(chips[i : i + 32])})[0])
        for i in range(0, len(chips), 32)
    ]
    return l2_normalise(np.concatenate(out))


def torch_descriptors(model: DlibResNet, chips: np.ndarray) -> np.ndarray:
    """Unit descriptors of ``chips`` by the PyTorch module."""
    with torch.inference_mode():
        return l2_normalise(model.eval()(torch.from_numpy(to_input(chips))).numpy())


def dlib_descriptors(network_path: Path, chips: np.ndarray) -> np.ndarray:
    """Unit descriptors of ``chips`` by dlib itself (``compute_face_descriptor`` on each
    150x150 chip, no jitter)."""
    import dlib

    net = dlib.face_recognition_model_v1(str(network_path))
    raw = np.array([net.compute_face_descriptor(np.ascontiguousarray(c)) for c in chips])
    return l2_normalise(raw.astype(np.float32))


def convert(weights: dict[str, Path]) -> tuple[DlibResNet, DlibConversionReport]:
    return convert_dlib_resnet(read_dlib_resnet(weights[NETWORK_FILE]))


def export(model: DlibResNet, out_dir: Path) -> Path:
    path = out_dir / embedder_file(DLIB_MODEL, "fp32")
    export_onnx(
        model,
        path,
        torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),
        "image",
        ["embedding"],
        {"image": {0: "batch"}, "embedding": {0: "batch"}},
        {
            "producer": "facerec models",
            "source": "dlib_face_recognition_resnet_model_v1.dat (face_recognition_models "
            "0.3.0), dlib anet_type",
            "licence": "CC0-1.0 (public domain dedication by Davis King)",
            "preprocessing": "none: RGB 0..255 NCHW in; (x - channel mean) / 256 inside",
            "alignment": "dlib get_face_chip_details(5 points, 150, padding 0.25)",
            "embedding_size": str(EMBEDDING_SIZE),
            "output": "dlib descriptor, not normalised (dlib: Euclidean distance, 0.6)",
        },
    )
    return path


def chips_for(
    images: list[np.ndarray], detections: list[Detections], weights: dict[str, Path]
) -> tuple[np.ndarray | None, np.ndarray]:
    """dlib's chips of each image's primary face (``None`` without dlib) and the project's
    MTCNN-landmark chips of the same faces: uint8[N, 150, 150, 3] each."""
    ours = np.stack(
        [mtcnn_chip(images[i], marks) for i, _, marks in primary_faces(images, detections)]
    )
    if not dlib_available():
        return None, ours
    theirs, _ = dlib_chips(images, detections, weights[PREDICTOR_FILE])
    return theirs, ours


def check_parity(
    model: DlibResNet,
    out_dir: Path,
    dlib_chips_: np.ndarray | None,
    mtcnn_chips: np.ndarray,
    network_path: Path,
) -> dict[str, Any]:
    """FP32 ONNX against PyTorch on every chip, and against dlib on dlib's chips; raises
    :class:`DlibParityError` below the floors. Also measures how close the MTCNN chip's
    descriptor is to dlib's chip's (a measurement, not a check)."""
    fp32 = out_dir / embedder_file(DLIB_MODEL, "fp32")
    chips = mtcnn_chips if dlib_chips_ is None else np.concatenate([dlib_chips_, mtcnn_chips])
    ours = run_graph(fp32, chips)
    cos_torch = (ours * torch_descriptors(model, chips)).sum(axis=1)
    if cos_torch.min() < TORCH_COSINE_MIN:
        raise DlibParityError(f"ONNX vs PyTorch cosine {cos_torch.min():.7f} < {TORCH_COSINE_MIN}")
    figures: dict[str, Any] = {
        "chips": len(chips),
        "cosine_vs_pytorch_min": float(cos_torch.min()),
    }
    if dlib_chips_ is None:
        figures["dlib"] = "not checked: dlib (dlib-bin) is not installed"
        return figures
    n = len(dlib_chips_)
    cos_dlib = (ours[:n] * dlib_descriptors(network_path, dlib_chips_)).sum(axis=1)
    if cos_dlib.min() < DLIB_COSINE_MIN:
        raise DlibParityError(f"ONNX vs dlib cosine {cos_dlib.min():.7f} < {DLIB_COSINE_MIN}")
    mtcnn_vs_dlib = (ours[:n] * ours[n:]).sum(axis=1)
    figures.update(
        dlib_chips=n,
        cosine_vs_dlib_min=float(cos_dlib.min()),
        mtcnn_chip_vs_dlib_chip={
            "cosine_min": float(mtcnn_vs_dlib.min()),
            "cosine_mean": float(mtcnn_vs_dlib.mean()),
            "cosine_median": float(np.median(mtcnn_vs_dlib)),
        },
    )
    return figures


def quantise(out_dir: Path, calibration: np.ndarray) -> dict[str, Any]:
    """INT8 graph calibrated on ``calibration`` chips uint8[N, 150, 150, 3]; its agreement
    with FP32 on them (raises :class:`DlibParityError` below :data:`INT8_COSINE_MIN`)."""
    fp32 = out_dir / embedder_file(DLIB_MODEL, "fp32")
    int8, float_layers = quantize_embedder(
        fp32, out_dir / embedder_file(DLIB_MODEL, "int8"), to_input(calibration), "image"
    )
    cosine = (run_graph(fp32, calibration) * run_graph(int8, calibration)).sum(axis=1)
    if cosine.min() < INT8_COSINE_MIN:
        raise DlibParityError(f"INT8 vs FP32 cosine {cosine.min():.5f} < {INT8_COSINE_MIN}")
    return {
        "calibration_chips": len(calibration),
        "method": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
        "float_layers": float_layers,
        "cosine_vs_fp32_min": float(cosine.min()),
        "cosine_vs_fp32_mean": float(cosine.mean()),
    }


def fp16(out_dir: Path, chips: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """FP16 graph by FaceNet's conversion (:func:`export.steps.half_precision`) and its
    agreement with FP32 and with PyTorch (``reference``: its unit descriptors of ``chips``
    uint8[N, 150, 150, 3]); raises :class:`DlibParityError` below
    :data:`export.steps.FP16_COSINE_MIN` against FP32."""
    figures = half_precision(out_dir, chips, load_model_card(DLIB_MODEL), reference)
    if figures["cosine_vs_fp32_min"] < FP16_COSINE_MIN:
        raise DlibParityError(
            f"FP16 vs FP32 cosine {figures['cosine_vs_fp32_min']:.7f} < {FP16_COSINE_MIN}"
        )
    return figures


def build(
    weights: dict[str, Path],
    out_dir: Path,
    images: list[np.ndarray],
    detections: list[Detections],
) -> dict[str, Any]:
    """Convert, export, check, quantise and halve; returns the manifest's ``dlib128``
    figures."""
    model, report = convert(weights)
    export(model, out_dir)
    theirs, ours = chips_for(images, detections, weights)
    parity = check_parity(model, out_dir, theirs, ours, weights[NETWORK_FILE])
    both = ours if theirs is None else np.concatenate([theirs, ours])
    calibration = np.concatenate([both, both[:, :, ::-1]])
    int8 = quantise(out_dir, calibration)
    half = fp16(out_dir, calibration, torch_descriptors(model, calibration))
    serving = serving_graphs(out_dir, calibration, load_model_card(DLIB_MODEL))
    return {
        "conversion": {
            "arrays_used": report.arrays_used,
            "values_used": report.values_used,
            "tensors_from_file": report.tensors_from_file,
            "layers": report.layers,
            "loss": report.loss,
        },
        "parity": parity,
        "int8": int8,
        "fp16": half,
        "serving": serving,
    }
