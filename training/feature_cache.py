"""The CPU path: run the frozen trunk once per crop version and keep its outputs.

Fine-tuning only the layers after ``freeze_until`` means the trunk's output for a given
input never changes, so it is computed once: for version 0 (the crop as served), 1 (its
mirror: flip averaging at evaluation) and ``2 .. V-1`` (augmented copies: flip, scale and
crop, colour, blur, JPEG, each drawn from a seed). Training then samples one version per
crop and step and runs only the trainable layers. The price: augmentation is limited to
``V - 2`` fixed draws per crop instead of a fresh one each time, and the cache costs
``V`` trunk passes per crop once (shared by all ten LFW folds, which train on subsets of
one crop set) and ``V x N x 32 KB`` of disk (float16, trunk up to ``mixed_7a``).

The trunk runs on ONNX Runtime (exported on the fly; about twice PyTorch's speed on CPU,
same values to 1e-6) unless ``backend="torch"``. The cache is a ``.npy`` memory map, keyed
by everything that determines it (trunk weights, crops, versions, augmentation, seed);
it is written under a temporary name and renamed when complete, so an interrupted build
is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.augment import AugmentConfig, augment, jpeg_mix, standardize, to_float_nchw
from training.checkpoint import weights_sha256
from training.inception_resnet_v1 import InceptionResnetV1
from training.network import Trunk, feature_shape, stages

log = logging.getLogger(__name__)


def _key(
    model: InceptionResnetV1,
    n: int,
    crops: np.ndarray,
    versions: int,
    cfg: AugmentConfig,
    seed: int,
) -> str:
    trunk_state = {
        f"{i}.{k}": v
        for i, (_, m) in enumerate(stages(model)[:n])
        for k, v in m.state_dict().items()
    }
    h = hashlib.sha256()
    h.update(weights_sha256(trunk_state).encode())
    h.update(json.dumps([n, versions, asdict(cfg), seed, list(crops.shape)]).encode())
    h.update(hashlib.sha256(crops.tobytes()).digest())
    return h.hexdigest()[:20]


def version_inputs(crops: np.ndarray, version: int, cfg: AugmentConfig, seed: int) -> torch.Tensor:
    """float32[N, 3, S, S] standardised inputs of one cache version of ``crops``."""
    if version == 0:
        x = to_float_nchw(torch.from_numpy(crops))
    elif version == 1:
        x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(crops[:, :, ::-1])))
    else:
        rng = np.random.default_rng([seed, version, len(crops)])
        mixed = jpeg_mix(crops, cfg, rng)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = augment(torch.from_numpy(mixed), cfg, g)
    return standardize(x)


class _OrtTrunk:
    def __init__(self, trunk: Trunk, path: Path, size: int, threads: int | None) -> None:
        from facerec.runtime import create_session
        from training.onnx_export import export_onnx

        if not path.is_file():
            export_onnx(
                trunk,
                path,
                torch.zeros(2, 3, size, size),
                "image",
                ["features"],
                {"image": {0: "batch"}, "features": {0: "batch"}},
            )
        self.session = create_session(path, threads)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return np.asarray(self.session.run(None, {"image": x.numpy()})[0])


def build_feature_cache(
    model: InceptionResnetV1,
    n_frozen: int,
    crops: np.ndarray,
    versions: int,
    cfg: AugmentConfig,
    seed: int,
    cache_dir: Path,
    backend: str = "onnxruntime",
    batch: int = 32,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The trunk outputs float16[versions, N, *feature_shape] of ``crops`` uint8[N, S, S, 3]
    (read back if a finished cache with the same key exists), and what it cost."""
    if versions < 2:
        raise ValueError("the cache needs versions 0 (crop) and 1 (mirror) at least")
    model.eval()
    shape = feature_shape(model, n_frozen, crops.shape[1])
    key = _key(model, n_frozen, crops, versions, cfg, seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"features-{key}.npy"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        info: dict[str, Any] = json.loads(info_path.read_text())
        info["reused"] = True
        return np.load(path, mmap_mode="r"), info
    trunk = Trunk(model, n_frozen).eval()
    run: Any
    if backend == "onnxruntime":
        run = _OrtTrunk(trunk, cache_dir / f"trunk-{key}.onnx", crops.shape[1], threads)
    else:

        def run(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                out: np.ndarray = trunk(x).numpy()
                return out

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    store = np.lib.format.open_memmap(tmp, "w+", np.float16, (versions, len(crops), *shape))
    start = time.perf_counter()
    bar = tqdm(total=versions * len(crops), unit="crop", desc="trunk cache", disable=not progress)
    try:
        for v in range(versions):
            for lo in range(0, len(crops), 512):
                x_all = version_inputs(crops[lo : lo + 512], v, cfg, seed + lo)
                for b in range(0, len(x_all), batch):
                    out = run(x_all[b : b + batch])
                    store[v, lo + b : lo + b + len(out)] = out.astype(np.float16)
                    bar.update(len(out))
        store.flush()
        del store
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    info = {
        "key": key,
        "versions": versions,
        "crops": len(crops),
        "feature_shape": list(shape),
        "bytes": path.stat().st_size,
        "seconds": round(seconds, 1),
        "crops_per_second": round(versions * len(crops) / seconds, 2),
        "backend": backend,
        "reused": False,
    }
    info_path.write_text(json.dumps(info, indent=2))
    return np.load(path, mmap_mode="r"), info
