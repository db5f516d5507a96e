"""Training data: aligned crops by identity, a P x K batch sampler, a PyTorch ``Dataset``.

The crops are those ``facerec prepare-dataset`` writes (``root/<identity>/<stem>.png`` or
``.jpg``, all ``S x S``), or the same packed into one file for carrying (:func:`write_pack`).
They are decoded once into one uint8 array ``[N, S, S, 3]`` (7,701 LFW crops: 590 MB):
small enough to hold in memory, and what the GPU script moves to the device in one copy.

Only torch, numpy and OpenCV are imported: the GPU training script runs this module where
nothing else is installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from training.augment import AugmentConfig, augment, jpeg_mix, standardize
from training.errors import TrainingDataError

CROP_SUFFIXES = (".png", ".jpg", ".jpeg")
PACK_INDEX = "index.json"
PACK_DATA = "crops.bin"


@dataclass
class CropSet:
    """Crops and whose they are: ``keys[i]`` is the file stem (``Name_0001``),
    ``labels[i]`` indexes ``identities``; ``crops`` uint8[N, S, S, 3] RGB (or None before
    :meth:`load`)."""

    root: Path
    keys: list[str]
    files: list[str]  # relative paths (folders) or "" (packs)
    identities: list[str]
    labels: np.ndarray  # int64[N]
    crops: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def image_counts(self) -> np.ndarray:
        """int64[identities]: images per identity."""
        return np.bincount(self.labels, minlength=len(self.identities))

    def subset(self, identities: Sequence[str]) -> CropSet:
        """The crops of ``identities`` only (relabelled 0..k-1 in the given order)."""
        index = {name: k for k, name in enumerate(identities)}
        keep = [i for i, lab in enumerate(self.labels) if self.identities[lab] in index]
        return CropSet(
            self.root,
            [self.keys[i] for i in keep],
            [self.files[i] for i in keep],
            list(identities),
            np.array([index[self.identities[self.labels[i]]] for i in keep], np.int64),
            None if self.crops is None else self.crops[keep],
        )

    def key_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def scan_crops(root: Path) -> CropSet:
    """List ``root/<identity>/<stem>.{png,jpg}`` (a pack when ``root`` holds
    ``index.json``). Raises :class:`TrainingDataError` (``not_found``,
    ``empty_dataset``)."""
    if not root.is_dir():
        raise TrainingDataError(f"{root} is not a folder", code="not_found")
    if (root / PACK_INDEX).is_file():
        return read_pack(root, decode=False)
    keys, files, labels, identities = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(
            f.name
            for f in os.scandir(folder)
            if f.is_file() and f.name.lower().endswith(CROP_SUFFIXES)
        )
        if not names:
            continue
        identities.append(folder.name)
        for name in names:
            keys.append(Path(name).stem)
            files.append(f"{folder.name}/{name}")
            labels.append(len(identities) - 1)
    if not keys:
        raise TrainingDataError(
            f"no crops in {root}: expected <identity>/<image>.png folders "
            "(make them with `facerec prepare-dataset`)",
            code="empty_dataset",
        )
    return CropSet(root, keys, files, identities, np.array(labels, np.int64))


def _decode(data: bytes | np.ndarray, what: str, size: int | None) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if len(buf) else None
    if img is None:
        raise TrainingDataError(f"{what} is not a readable image", code="corrupt_image", file=what)
    if img.shape[0] != img.shape[1] or (size is not None and img.shape[0] != size):
        raise TrainingDataError(
            f"{what} is {img.shape[1]}x{img.shape[0]}; training crops must be "
            f"{size or 'square'}x{size or ''} (facerec prepare-dataset makes them)",
            code="wrong_crop_size",
            file=what,
        )
    return np.ascontiguousarray(img[:, :, ::-1])


def load_crops(cs: CropSet, size: int = 160, threads: int | None = None) -> CropSet:
    """Decode every crop of ``cs`` (in threads) into ``cs.crops`` uint8[N, size, size, 3].
    A file that is not an image, or not ``size`` square, raises
    :class:`TrainingDataError` (``corrupt_image``, ``wrong_crop_size``) naming it."""
    if cs.crops is not None:
        return cs
    out = np.empty((len(cs), size, size, 3), np.uint8)

    def one(i: int) -> None:
        path = cs.root / cs.files[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrainingDataError(str(exc), code="corrupt_image", file=str(path)) from None
        out[i] = _decode(data, str(path), size)

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(cs))))
    cs.crops = out
    return cs


def write_pack(cs: CropSet, out: Path, quality: int = 90) -> int:
    """Write ``cs`` (loaded) as one file of JPEG crops at ``quality`` plus an index:
    what the GPU machine gets (a few thousand files transfer slowly; one does not).
    Returns the data size in bytes."""
    assert cs.crops is not None, "load the crops first"
    out.mkdir(parents=True, exist_ok=True)
    offsets, blobs = [0], []
    for crop in cs.crops:
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(crop[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            raise TrainingDataError("JPEG encoding failed")
        blobs.append(bytes(buf))
        offsets.append(offsets[-1] + len(blobs[-1]))
    (out / PACK_DATA).write_bytes(b"".join(blobs))
    index = {
        "format": "facerec-crop-pack/1",
        "size": int(cs.crops.shape[1]),
        "jpeg_quality": quality,
        "keys": cs.keys,
        "identities": cs.identities,
        "labels": cs.labels.tolist(),
        "offsets": offsets,
    }
    (out / PACK_INDEX).write_text(json.dumps(index))
    return offsets[-1]


def read_pack(root: Path, decode: bool = True, threads: int | None = None) -> CropSet:
    """A pack written by :func:`write_pack`, decoded when ``decode`` (in threads)."""
    try:
        index = json.loads((root / PACK_INDEX).read_text())
        offsets = index["offsets"]
        keys = index["keys"]
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingDataError(f"{root}: not a crop pack ({exc})", code="corrupt_image") from None
    cs = CropSet(
        root, keys, [""] * len(keys), index["identities"], np.array(index["labels"], np.int64)
    )
    if not decode:
        return cs
    data = (root / PACK_DATA).read_bytes()
    size = int(index["size"])
    out = np.empty((len(keys), size, size, 3), np.uint8)
    view = np.frombuffer(data, np.uint8)

    def one(i: int) -> None:
        out[i] = _decode(view[offsets[i] : offsets[i + 1]], f"{root}:{keys[i]}", size)

    with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(keys))))
    cs.crops = out
    return cs


def require_identities(cs: CropSet, min_images: int = 2, at_least: int = 2) -> np.ndarray:
    """Identities with ``min_images`` or more crops (int64 labels); at least ``at_least``
    of them, else :class:`TrainingDataError` (``too_few_identities``): a triplet needs two
    images of one person and one of another."""
    eligible = np.flatnonzero(cs.image_counts >= min_images)
    if len(eligible) < at_least:
        raise TrainingDataError(
            f"{cs.root}: {len(eligible)} identities have {min_images}+ crops; triplet training "
            f"needs at least {at_least} (of {len(cs.identities)} identities)",
            code="too_few_identities",
        )
    return eligible


class PKSampler(Sampler[list[int]]):
    """Batches of ``P`` identities x ``K`` crops each (FaceNet's batches; Hermans et al.).

    Identities with at least ``min_images`` crops take part, visited in a shuffled order
    and P at a time; an identity with fewer than K crops repeats some (each repeat gets
    its own augmentation). An epoch has ``len(eligible crops) // (P * K)`` batches (at
    least one). Fully determined by ``seed`` and the epoch (:meth:`set_epoch`).
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0, min_images: int = 2):
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed = p, k, seed
        counts = np.bincount(self.labels)
        self.identities = np.flatnonzero(counts >= min_images)
        if len(self.identities) < max(2, p):
            raise TrainingDataError(
                f"a P x K batch needs P = {p} identities with {min_images}+ crops; "
                f"the data has {len(self.identities)}",
                code="too_few_identities",
            )
        self.members = {int(c): np.flatnonzero(self.labels == c) for c in self.identities}
        eligible = sum(len(m) for m in self.members.values())
        self.batches = max(1, eligible // (p * k))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        order: list[int] = []
        for _ in range(self.batches):
            if len(order) < self.p:
                order += rng.permutation(self.identities).tolist()
            chosen, order = order[: self.p], order[self.p :]
            batch: list[int] = []
            for c in chosen:
                members = self.members[c]
                picks = rng.permutation(members)[: self.k]
                if len(picks) < self.k:
                    picks = np.concatenate([picks, rng.choice(members, self.k - len(picks))])
                batch += picks.tolist()
            yield batch


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Augmented, standardised crops: item i is (float32[3, S, S], label).

    Each item's augmentation is drawn from a generator seeded by (seed, epoch, i), so a
    run is reproducible and resumable; call :meth:`set_epoch` each epoch.
    """

    def __init__(self, crops: CropSet, cfg: AugmentConfig, seed: int = 0) -> None:
        self.set = load_crops(crops)
        self.cfg, self.seed, self.epoch = cfg, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        assert self.set.crops is not None
        rng = np.random.default_rng([self.seed, self.epoch, i])
        crop = jpeg_mix(self.set.crops[i : i + 1], self.cfg, rng)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = standardize(augment(torch.from_numpy(crop), self.cfg, g))[0]
        return x, int(self.set.labels[i])
