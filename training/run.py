"""``facerec train``'s work, callable without the command line: check the data and the
settings, build the engine (trunk cache on CPU, whole network on a GPU), run one split or
LFW's ten folds.

Everything that can be wrong with the input (no crops, a corrupt crop, one identity, an
unknown layer, an existing output folder) is found before ``out`` is created.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facerec.evaluation.pairs import read_pairs
from facerec.models import BASE_MODEL, facerec_home, load_model_card
from training.checkpoint import load_weights, weights_sha256
from training.data import CropSet, load_crops, require_identities, scan_crops
from training.engines import CachedEngine, FullEngine, jpeg_copies
from training.errors import CheckpointError, TrainingConfigError, TrainingDataError
from training.feature_cache import build_feature_cache
from training.finetune import Engine, TrainConfig, run_training
from training.inception_resnet_v1 import InceptionResnetV1
from training.network import split_index, stage_names
from training.protocol import lfw_tenfold
from training.splits import Split, identity_split, lfw_split

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """Where the data and the output are, how to split, and how to run (not what the
    result depends on: that is :class:`~training.finetune.TrainConfig`)."""

    data: Path
    out: Path
    lfw_pairs: Path | None = None
    test_fold: int | None = None
    ten_fold: bool = False
    folds: list[int] | None = None
    val_fraction: float = 0.1
    init: str = BASE_MODEL
    device: str = "auto"
    cache: str = "auto"
    aug_versions: int = 4
    cache_dir: Path | None = None
    trunk_backend: str = "onnxruntime"
    resume: bool = False
    time_budget: float | None = None
    threads: int | None = None
    home: Path | None = None


def base_weights(init: str, home: Path | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The starting weights: the published model (``facenet128``, converted from the file
    ``facerec models`` fetched) or a checkpoint / half-weights file, and their identity."""
    if init == BASE_MODEL:
        path = (home or facerec_home()) / "weights" / "facenet_keras.h5"
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: run `facerec models` first", code="checkpoint_not_found"
            )
        from training.facenet_keras import load_facenet_keras

        state = load_facenet_keras(path).state_dict()
        sha = load_model_card(BASE_MODEL).weights_sha256
        return state, {"model": BASE_MODEL, "weights_sha256": sha, "source": str(path)}
    state = load_weights(Path(init))
    return state, {"model": None, "weights_sha256": weights_sha256(state), "source": init}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingConfigError("--device cuda: no CUDA device here")
    return torch.device(name)


def _check_output(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingConfigError(f"{out} exists and is not a folder", code="output_exists")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise TrainingConfigError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out",
            code="output_exists",
        )


def engine_factory(
    cs: CropSet,
    cfg: TrainConfig,
    req: RunRequest,
    init_state: dict[str, Tensor],
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """The engine builder for :func:`run_training` and what building it cost."""
    device = _device(req.device)
    assert cs.crops is not None
    probe = InceptionResnetV1()
    n_frozen = split_index(probe, cfg.freeze_until)
    cached = req.cache == "on" or (req.cache == "auto" and device.type == "cpu" and n_frozen > 0)
    if cached:
        if device.type != "cpu":
            raise TrainingConfigError("the trunk cache is the CPU path; use --cache off on a GPU")
        if n_frozen == 0 or n_frozen > len(stage_names(probe)):
            raise TrainingConfigError("the trunk cache needs --freeze-until a stage, not none")
        probe.load_state_dict(init_state)
        store, info = build_feature_cache(
            probe,
            n_frozen,
            cs.crops,
            req.aug_versions,
            cfg.augment,
            cfg.seed,
            req.cache_dir or (req.home or facerec_home()) / "training-cache",
            backend=req.trunk_backend,
            threads=req.threads,
            progress=progress,
        )

        def make_cached(model: InceptionResnetV1, n: int) -> Engine:
            return CachedEngine(model, n, store)

        return make_cached, {"engine": "cached trunk", "cache": info}
    crops = torch.from_numpy(cs.crops).to(device)
    jpeg_np = jpeg_copies(cs.crops, cfg.augment, cfg.seed)
    jpeg = None if jpeg_np is None else torch.from_numpy(jpeg_np).to(device)

    def make_full(model: InceptionResnetV1, n: int) -> Engine:
        return FullEngine(model.to(device), crops, jpeg, cfg.augment, cfg.amp)

    return make_full, {"engine": "whole network", "device": str(device)}


def train(req: RunRequest, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run what ``req`` asks; return the metrics (one run, or the ten-fold summary)."""
    if req.threads:
        torch.set_num_threads(req.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    _check_output(req.out, req.resume)
    split_index(InceptionResnetV1(), cfg.freeze_until)  # unknown layer names fail here
    cs = scan_crops(req.data)
    require_identities(cs, cfg.min_images, max(2, cfg.p))
    pairs = read_pairs(req.lfw_pairs) if req.lfw_pairs else None
    if (req.ten_fold or req.test_fold is not None) and pairs is None:
        raise TrainingConfigError("--ten-fold and --test-fold need --lfw-pairs")
    split: Split | None = None
    if pairs is not None and not req.ten_fold:
        split = lfw_split(cs, pairs, req.test_fold if req.test_fold is not None else 0)
    elif pairs is None:
        split = identity_split(cs, req.val_fraction, cfg.seed)
    if split is not None:
        train_ids = set(split.train)
        mask = np.array([cs.identities[lab] in train_ids for lab in cs.labels])
        counts = np.bincount(cs.labels[mask], minlength=len(cs.identities))
        if int((counts >= cfg.min_images).sum()) < max(2, cfg.p):
            raise TrainingDataError(
                f"the training identities hold {int((counts >= cfg.min_images).sum())} with "
                f"{cfg.min_images}+ crops; P = {cfg.p} per batch needs at least that many",
                code="too_few_identities",
            )
    load_crops(cs, threads=req.threads)  # a corrupt crop fails here, before any output
    init_state, base = base_weights(req.init, req.home)
    make_engine, engine_info = engine_factory(cs, cfg, req, init_state, progress)
    meta = {
        "base": base,
        "data": {"root": str(req.data), "crops": len(cs), "identities": len(cs.identities)},
        "engine": engine_info,
        "torch": str(torch.__version__),
        "machine": platform.platform(),
    }
    if req.ten_fold:
        assert pairs is not None
        folds = req.folds if req.folds is not None else list(range(10))
        return lfw_tenfold(
            cs,
            pairs,
            cfg,
            init_state,
            make_engine,
            req.out,
            folds,
            meta,
            progress,
            req.time_budget,
            extra={"engine": engine_info, "base": base},
        )
    assert split is not None
    if pairs is not None:
        meta["lfw"] = {
            "test_fold": split.info["test_fold"],
            "validation_fold": split.info["validation_fold"],
        }
    deadline = None
    if req.time_budget is not None:
        deadline = time.monotonic() + req.time_budget
    result = run_training(
        cs, split, cfg, init_state, make_engine, req.out, meta, progress, deadline, req.resume
    )
    metrics = result.metrics
    metrics["engine"] = engine_info
    return metrics
