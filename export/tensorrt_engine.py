"""TensorRT engines of the serving embedder, for Triton's ``tensorrt_plan`` backend.

    python -m export.tensorrt_engine --precision fp16 --out model_repository_gpu/embedder/1
    python -m export.tensorrt_engine --precision int8 --cache int8.cache --out DIR

FP16 builds from the FP32 serving graph with FP16 kernels allowed. INT8 calibrates on real
face crops (the bundled faces, aligned as the pipeline aligns them) with an entropy
calibrator whose table is kept in ``--cache``: a later build with the cache skips
calibration. Needs the ``tensorrt`` package and a CUDA GPU (buffers through PyTorch's
CUDA allocator); anywhere else it says what is missing and exits 0 (skipped), or 2 with
``--require``. Engines are tied to the GPU model and TensorRT version they were built on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facerec.models import load_model_card, model_path

log = logging.getLogger(__name__)


def missing() -> str | None:
    """Why an engine cannot be built here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt on a CUDA machine)"
    try:
        import torch
    except ImportError:
        return "PyTorch is needed for the CUDA buffers (pip install -e '.[export]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def calibration_crops(limit: int = 512) -> np.ndarray:
    """Aligned crops (and mirrors) of the bundled faces: uint8[N, S, S, 3]."""
    from export.setup_models import face_images
    from facerec.pipeline import FacePipeline

    pipeline = FacePipeline.local()
    crops = []
    for image in face_images():
        (det,) = pipeline.detect([image])
        if len(det):
            crops.append(pipeline.align(image, det))
    both = np.concatenate(crops)
    return np.concatenate([both, both[:, :, ::-1]])[:limit]


def _calibrator(trt: Any, crops: np.ndarray, cache: Path, batch: int) -> Any:
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.batches = [crops[i : i + batch] for i in range(0, len(crops) - batch + 1, batch)]
            self.device = torch.empty((batch, *crops.shape[1:]), dtype=torch.uint8, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self.batches:
                return None
            self.device.copy_(torch.from_numpy(np.ascontiguousarray(self.batches.pop(0))))
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(
    precision: str,
    out: Path,
    cache: Path | None = None,
    max_batch: int = 128,
    opt_batch: int = 32,
) -> Path:
    """Build ``out`` (``model.plan``) from the FP32 serving graph; returns its path."""
    import tensorrt as trt

    card = load_model_card()
    onnx_file = model_path(f"{card.name}-fp32-serving")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    s = card.input_size
    profile = builder.create_optimization_profile()
    profile.set_shape("CROPS", (1, s, s, 3), (opt_batch, s, s, 3), (max_batch, s, s, 3))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = _calibrator(
            trt, calibration_crops(), cache or out.with_suffix(".int8.cache"), 16
        )
    elif precision != "fp16":
        raise ValueError(f"precision must be fp16 or int8, not {precision!r}")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(engine))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=["fp16", "int8"], default="fp16")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="for model.plan")
    parser.add_argument("--cache", type=Path, default=None, help="INT8 calibration cache")
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument(
        "--require", action="store_true", help="exit 2 instead of skipping without TensorRT"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    reason = missing()
    if reason is not None:
        print(f"skipped: no TensorRT engine built here: {reason}", file=sys.stderr)
        return 2 if args.require else 0
    plan = build_engine(args.precision, args.out / "model.plan", args.cache, args.max_batch)
    print(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
