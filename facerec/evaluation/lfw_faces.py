"""Every LFW image embedded once, with its face's geometry and quality, cached on disk.

The open-set benchmark and the identification calibration need all 7,701 images of
``../shared/datasets/lfw`` embedded with the project's pipeline (edge padding as
``facerec bench lfw`` does, worker processes); a second run with the same settings reads
the cache instead (seconds instead of minutes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facerec.detection.types import Detections
from facerec.errors import InvalidArgumentError
from facerec.evaluation.lfw import embed_images, find_image
from facerec.fusion import fuse_embeddings, split_embeddings
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.pipeline import FacePipeline
from facerec.quality import sharpness

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class LfwFaces:
    """One row per image, sorted by key.

    ``embeddings`` float32[N, D] (unit), ``boxes`` float32[N, 4] and ``landmarks``
    float32[N, 5, 2] in the padded image's pixels, ``scores`` float32[N] (0 where no face
    was found and a centre crop was embedded), ``found`` bool[N], ``detected`` int32[N]
    (faces the detector saw), ``sharpness`` float32[N] (:func:`facerec.quality.sharpness`
    of the aligned crop), ``image_size`` int32[N, 2] (height, width after padding).
    """

    keys: list[str]
    embeddings: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    detected: np.ndarray
    sharpness: np.ndarray
    image_size: np.ndarray

    @property
    def identities(self) -> list[str]:
        """The person of each image (``Aaron_Peirsol_0001`` -> ``Aaron_Peirsol``)."""
        return [k.rsplit("_", 1)[0] for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)


def lfw_keys(data_dir: Path) -> list[str]:
    """Every image key of an LFW folder (flat ``images/`` or the folder itself), sorted."""
    folder = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    keys = sorted(p.stem for p in folder.glob("*.jpg"))
    if not keys:
        raise InvalidArgumentError(f"no LFW images (*.jpg) under {folder}", code="not_found")
    return keys


def _settings(pipeline: FacePipeline, pad: int, n: int) -> dict[str, object]:
    cfg = pipeline.config
    settings: dict[str, object] = {
        "version": CACHE_VERSION,
        "model": pipeline.card.name,
        "alignment": cfg.alignment,
        "flip": cfg.flip,
        "precision": cfg.precision,
        "detector": asdict(cfg.detector),
        "pad": pad,
        "images": n,
    }
    if pipeline.card.fused:  # the parts' weights: another weighting reweights the cache
        settings["parts"] = [p.identity for p in pipeline.card.parts]
        settings["part_weights"] = [round(w, 9) for w in pipeline.card.part_weights]
    return settings


def _reweighted(
    pipeline: FacePipeline, cached: dict[str, object], settings: dict[str, object], x: np.ndarray
) -> np.ndarray | None:
    """A fused model's cached embeddings with the card's weights, when the cache differs
    from ``settings`` only by the parts' weights (None otherwise): each part's unit
    embedding is recovered and weighted anew (:mod:`facerec.fusion`), no image embedded."""
    if not pipeline.card.fused or "part_weights" not in cached:
        return None
    if {k: v for k, v in cached.items() if k != "part_weights"} != {
        k: v for k, v in settings.items() if k != "part_weights"
    }:
        return None
    sizes = [p.embedding_size for p in pipeline.card.parts]
    old = [float(w) for w in cached["part_weights"]]  # type: ignore[attr-defined]
    return fuse_embeddings(split_embeddings(x, sizes, old), pipeline.card.part_weights)


def load_or_embed(
    pipeline: FacePipeline,
    data_dir: Path,
    cache: Path,
    pad: int = 50,
    progress: bool = True,
) -> LfwFaces:
    """The cached faces in ``cache`` (an ``.npz``) if it was made with these settings,
    else embed every image of ``data_dir`` and write the cache."""
    keys = lfw_keys(data_dir)
    settings = json.loads(json.dumps(_settings(pipeline, pad, len(keys))))  # tuples -> lists
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            cached = json.loads(str(z["settings"]))
            arrays = {f: z[f] for f in _ARRAYS}
            keys_cached = [str(k) for k in z["keys"]]
        if cached == settings:
            log.info("LFW embeddings from cache %s", cache)
            return LfwFaces(keys=keys_cached, **arrays)
        reweighted = _reweighted(pipeline, cached, settings, arrays["embeddings"])
        if reweighted is not None:
            log.info("LFW embeddings from cache %s, reweighted", cache)
            faces = LfwFaces(keys=keys_cached, **{**arrays, "embeddings": reweighted})
            _write(cache, settings, faces)
            return faces
        log.info("cache %s was made with other settings: embedding again", cache)
    run = embed_images(pipeline, data_dir, keys, pad, progress=progress)
    if run.decode_errors:
        raise InvalidArgumentError(
            f"{len(run.decode_errors)} LFW images could not be read, e.g. "
            f"{next(iter(run.decode_errors.items()))}",
            code="corrupt_image",
        )
    n = len(keys)
    faces = LfwFaces(
        keys=keys,
        embeddings=run.embeddings,
        boxes=np.zeros((n, 4), np.float32),
        landmarks=np.zeros((n, 5, 2), np.float32),
        scores=np.zeros(n, np.float32),
        found=np.zeros(n, bool),
        detected=np.zeros(n, np.int32),
        sharpness=np.zeros(n, np.float32),
        image_size=np.zeros((n, 2), np.int32),
    )
    for i, face in enumerate(run.faces):
        if face is not None:
            faces.boxes[i], faces.landmarks[i] = face.box, face.landmarks
            faces.scores[i], faces.found[i] = face.score, True
    faces.detected[:] = run.detected
    _measure_crops(pipeline, data_dir, faces, pad, progress)
    _write(cache, settings, faces)
    return faces


def _write(cache: Path, settings: dict[str, object], faces: LfwFaces) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache,
        settings=json.dumps(settings),
        keys=np.asarray(faces.keys),
        **{f: getattr(faces, f) for f in _ARRAYS},
    )


_ARRAYS = (
    "embeddings",
    "boxes",
    "landmarks",
    "scores",
    "found",
    "detected",
    "sharpness",
    "image_size",
)


def _measure_crops(
    pipeline: FacePipeline, data_dir: Path, faces: LfwFaces, pad: int, progress: bool
) -> None:
    """Fill ``image_size`` and ``sharpness``: decode again and align each found face
    (no detection, no embedding: a few milliseconds per image)."""
    for i in tqdm(range(len(faces)), desc="crops", unit="img", disable=not progress):
        image = pad_edges(read_image(find_image(data_dir, faces.keys[i])), pad)
        faces.image_size[i] = image.shape[:2]
        if not faces.found[i]:
            continue
        det = Detections(
            faces.boxes[i : i + 1], faces.scores[i : i + 1], faces.landmarks[i : i + 1]
        )
        faces.sharpness[i] = sharpness(pipeline.align(image, det)[0])
