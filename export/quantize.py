"""INT8 static quantisation of the embedder, calibrated on real face crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)


class _CropReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds prewhitened crops float32[N, 3, S, S] in batches of ``batch``."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_embedder(fp32: Path, out: Path, calibration: np.ndarray, input_name: str) -> Path:
    """Write an INT8 QDQ model (per-channel weights, unsigned activations) to ``out``.

    ``calibration``: prewhitened face crops float32[N, 3, S, S].
    """
    prepared = out.with_suffix(".prep.onnx")
    tmp = out.with_suffix(".tmp.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
    log.info("calibrating INT8 on %d crops", len(calibration))
    quantize_static(
        str(prepared),
        str(tmp),
        _CropReader(input_name, batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
    tmp.replace(out)
    return out
