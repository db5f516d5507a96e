"""ONNX Runtime sessions: one place that decides threads and execution providers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from facerec.errors import ModelNotFoundError

log = logging.getLogger(__name__)

_PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def default_threads() -> int:
    """Intra-op threads: ``FACEREC_THREADS`` or the number of usable cores."""
    env = os.environ.get("FACEREC_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def create_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """Open ``path`` with the best available execution provider.

    GPU providers are used when this onnxruntime build has them; otherwise the CPU.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} is missing; run `facerec models`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = set(ort.get_available_providers())
    providers = [p for p in _PREFERRED_PROVIDERS if p in available]
    log.debug("loading %s with %s", path.name, providers)
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
