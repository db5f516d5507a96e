"""``facerec prepare-dataset``: aligned face crops of a data set, cut the way serving cuts them.

Every image goes through the project's own pipeline in worker processes: decode (with its
limits and error codes), optional edge padding, MTCNN, the primary face (largest, most
central), the model card's alignment. The crop written is the crop the serving path
embeds, so what is trained is what is served. PNG (default) keeps it exact; JPEG is
smaller. The output repeats the source's identities as folders, ``DST/<identity>/<stem>.png``,
with ``DST/manifest.json`` listing the settings and every skipped image with its reason.

The output appears whole or not at all: crops are written into a hidden sibling folder
that is renamed to ``DST`` at the end, and removed on any failure.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from facerec.dataset.layout import DatasetError, Layout, scan_source
from facerec.errors import FaceRecError
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.models import ModelCard
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.runtime import default_threads
from facerec.selection import primary_face

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "facerec-aligned-crops/1"
ImageFormat = Literal["png", "jpg"]


@dataclass(frozen=True)
class PrepareOptions:
    """``pad``: edge padding (px per side) before detection, as ``facerec bench lfw``
    pads LFW's tight 150x150 crops (50); ``image_format``/``quality``: how crops are
    stored (PNG is lossless); ``processes``: worker processes (default: one per core)."""

    pad: int = 0
    image_format: ImageFormat = "png"
    quality: int = 95
    processes: int | None = None
    layout: Layout = "auto"
    chunk: int = 16


@dataclass(frozen=True)
class CropOutcome:
    """One image's crop (encoded) or why there is none; ``faces``: how many were found."""

    data: bytes | None
    faces: int = 0
    code: str = ""
    message: str = ""


_pipeline: FacePipeline | None = None


def _init(config: PipelineConfig, home: Path | None) -> None:
    global _pipeline
    _pipeline = FacePipeline.local(config, home)


def encode_crop(crop: np.ndarray, image_format: ImageFormat, quality: int) -> bytes:
    """``crop`` uint8[S, S, 3] RGB as PNG or JPEG bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if image_format == "jpg" else []
    ok, buf = cv2.imencode(f".{image_format}", np.ascontiguousarray(crop[:, :, ::-1]), params)
    if not ok:
        raise DatasetError(f"could not encode a crop as {image_format}")
    return bytes(buf)


def crop_images(
    pipeline: FacePipeline, paths: Sequence[Path], pad: int
) -> list[tuple[np.ndarray, int] | FaceRecError]:
    """The primary face's aligned crop (uint8[S, S, 3]) of each file and how many faces it
    had, or the error (decoding, ``no_face``) that left it without one."""
    out: list[tuple[np.ndarray, int] | FaceRecError] = []
    images, slots = [], []
    for p in paths:
        try:
            images.append(pad_edges(read_image(p), pad))
        except FaceRecError as exc:
            out.append(exc)
            continue
        slots.append(len(out))
        out.append(FaceRecError("not analysed"))
    for slot, image, det in zip(slots, images, pipeline.detect(images), strict=True):
        if len(det) == 0:
            out[slot] = FaceRecError("no face found", code="no_face")
            continue
        one = det.take([primary_face(det, image.shape[0], image.shape[1])])
        out[slot] = (pipeline.align(image, one)[0], len(det))
    return out


def _crop_chunk(
    paths: Sequence[Path], pad: int, image_format: ImageFormat | None, quality: int
) -> list[CropOutcome]:
    """Crops of ``paths``, encoded (or raw uint8 bytes when ``image_format`` is None)."""
    assert _pipeline is not None, "worker not initialised"
    outcomes = []
    for result in crop_images(_pipeline, paths, pad):
        if isinstance(result, FaceRecError):
            outcomes.append(CropOutcome(None, 0, result.code, result.message))
        else:
            crop, faces = result
            if image_format is None:
                outcomes.append(CropOutcome(crop.tobytes(), faces))
            else:
                outcomes.append(CropOutcome(encode_crop(crop, image_format, quality), faces))
    return outcomes


def _pool(config: PipelineConfig, processes: int, home: Path | None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(replace(config, workers=1, threads=1), home),
    )


def _single(card: ModelCard) -> None:
    """Refuse a fused model: its crops are its parts' side by side, no training set."""
    if card.fused:
        raise DatasetError(
            f"{card.name} is a fused model; prepare the crops of one of its parts "
            f"({', '.join(p.name for p in card.parts)})",
            code="invalid_argument",
        )


def aligned_crops(
    paths: Sequence[Path],
    config: PipelineConfig,
    pad: int = 0,
    processes: int | None = None,
    progress: bool = False,
    home: Path | None = None,
    chunk: int = 16,
) -> list[np.ndarray | CropOutcome]:
    """The primary face's crop uint8[S, S, 3] of each file, made in worker processes as
    :func:`prepare_dataset` makes them, or the :class:`CropOutcome` saying why not."""
    card = FacePipeline.local(replace(config, workers=1, threads=1), home).card
    _single(card)
    s = card.input_size
    chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
    n = max(1, min(processes or default_threads(), len(chunks)))
    out: list[np.ndarray | CropOutcome] = []
    bar = tqdm(total=len(paths), unit="img", desc="crops", disable=not progress)
    with _pool(config, n, home) as pool:
        k = len(chunks)
        for outcomes in pool.map(_crop_chunk, chunks, [pad] * k, [None] * k, [0] * k):
            for o in outcomes:
                raw = None if o.data is None else np.frombuffer(o.data, np.uint8)
                out.append(o if raw is None else raw.reshape(s, s, 3))
            bar.update(len(outcomes))
    bar.close()
    return out


def prepare_dataset(
    src: Path,
    dst: Path,
    config: PipelineConfig,
    options: PrepareOptions | None = None,
    progress: bool = True,
    home: Path | None = None,
) -> dict[str, Any]:
    """Write the aligned crops of ``src``'s images to ``dst``; return the manifest.

    Raises :class:`DatasetError`: ``not_found``/``empty_dataset``/``mixed_layout`` (the
    source), ``output_exists`` (``dst`` is a non-empty folder), ``no_faces`` (no image
    gave a crop). Nothing is left at ``dst`` when it raises.
    """
    opts = options or PrepareOptions()
    if opts.image_format not in ("png", "jpg") or not 1 <= opts.quality <= 100:
        raise DatasetError(
            "image format must be png or jpg, quality 1-100", code="invalid_argument"
        )
    listing = scan_source(src, opts.layout)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst} exists and is not an empty folder", code="output_exists")
    start = time.perf_counter()
    card = FacePipeline.local(replace(config, workers=1, threads=1), home).card
    _single(card)
    names: dict[str, int] = {}
    skipped: list[dict[str, str]] = [
        {"path": path, "code": reason.split(":")[0], "message": reason}
        for path, reason in listing.unplaced.items()
    ]
    kept: Counter[str] = Counter()
    several = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        chunks = [
            listing.images[i : i + opts.chunk] for i in range(0, len(listing.images), opts.chunk)
        ]
        processes = max(1, min(opts.processes or default_threads(), len(chunks)))
        bar = tqdm(total=len(listing.images), unit="img", desc="crops", disable=not progress)
        with _pool(config, processes, home) as pool:
            results = pool.map(
                _crop_chunk,
                [[im.path for im in c] for c in chunks],
                [opts.pad] * len(chunks),
                [opts.image_format] * len(chunks),
                [opts.quality] * len(chunks),
            )
            for chunk, outcomes in zip(chunks, results, strict=True):
                for image, outcome in zip(chunk, outcomes, strict=True):
                    bar.update(1)
                    if outcome.data is None:
                        skipped.append(
                            {
                                "path": str(image.path),
                                "code": outcome.code,
                                "message": outcome.message,
                            }
                        )
                        continue
                    rel = f"{image.identity}/{image.stem}.{opts.image_format}"
                    if rel in names:
                        skipped.append(
                            {
                                "path": str(image.path),
                                "code": "duplicate_name",
                                "message": f"another image of {image.identity} is also {rel}",
                            }
                        )
                        continue
                    names[rel] = 1
                    (staging / image.identity).mkdir(exist_ok=True)
                    (staging / rel).write_bytes(outcome.data)
                    kept[image.identity] += 1
                    several += outcome.faces > 1
        bar.close()
        if not kept:
            raise DatasetError(
                f"no face crop could be made from the {len(listing.images)} images of {src}",
                code="no_faces",
                skipped=len(skipped),
            )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "source": str(listing.root),
            "layout": listing.layout,
            "model": card.name,
            "input_size": card.input_size,
            "alignment": config.alignment,
            "template": [list(t) for t in card.template],
            "box_margin": card.box_margin,
            "detector": asdict(config.detector),
            "max_detect_side": config.max_detect_side,
            "pad": opts.pad,
            "pad_mode": "edge replicate",
            "image_format": opts.image_format,
            "quality": opts.quality if opts.image_format == "jpg" else None,
            "images": len(listing.images) + len(listing.unplaced),
            "kept": sum(kept.values()),
            "identities": len(kept),
            "several_faces": several,
            "several_faces_handling": "kept the largest, most central face",
            "skipped": len(skipped),
            "skipped_by_code": dict(Counter(s["code"] for s in skipped)),
            "skipped_images": skipped,
            "seconds": round(time.perf_counter() - start, 2),
            "processes": processes,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if dst.exists():
            dst.rmdir()
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
