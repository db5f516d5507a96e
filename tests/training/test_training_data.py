"""Augmentation, the PyTorch Dataset and LFW's identity splits (training/augment.py,
training/data.py, training/splits.py), on synthetic crops: no models needed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facerec.errors import FaceRecError  # noqa: E402
from facerec.evaluation.pairs import Pair, identity_of  # noqa: E402
from training.augment import (  # noqa: E402
    NO_AUGMENT,
    AugmentConfig,
    augment,
    jpeg_mix,
    standardize,
    to_float_nchw,
)
from training.data import CropSet, FaceDataset  # noqa: E402
from training.splits import identity_split, lfw_split  # noqa: E402

S = 32


def _crops(n: int = 6, seed: int = 0) -> np.ndarray:
    """uint8[n, S, S, 3]: smooth random images (JPEG and blur change them measurably)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    return np.stack([np.kron(c, np.ones((4, 4, 1))) for c in small]).astype(np.uint8)


def test_no_augmentation_is_the_identity() -> None:
    crops = torch.from_numpy(_crops())
    out = augment(crops, NO_AUGMENT, torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, S, S) and out.dtype == torch.float32
    assert torch.equal(out, to_float_nchw(crops))


def test_flip_alone_mirrors_the_crop() -> None:
    crops = torch.from_numpy(_crops())
    out = augment(crops, replace(NO_AUGMENT, flip=1.0), torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, to_float_nchw(crops).flip(3), atol=1e-3, rtol=0)


def test_augmentation_is_seeded_and_in_range() -> None:
    crops = torch.from_numpy(_crops())
    cfg = AugmentConfig(blur=1.0)
    a = augment(crops, cfg, torch.Generator().manual_seed(3))
    b = augment(crops, cfg, torch.Generator().manual_seed(3))
    c = augment(crops, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0
    assert not torch.allclose(a, to_float_nchw(crops))


def test_each_augmentation_changes_only_what_it_should() -> None:
    crops = torch.from_numpy(_crops())
    base = to_float_nchw(crops)
    g = torch.Generator().manual_seed(0)
    # colour jitter leaves a grey image grey
    grey = torch.full((2, S, S, 3), 128, dtype=torch.uint8)
    jittered = augment(grey, replace(NO_AUGMENT, brightness=0.3, saturation=0.3), g)
    assert torch.allclose(jittered[:, 0], jittered[:, 1]) and torch.allclose(
        jittered[:, 1], jittered[:, 2]
    )
    # blur keeps the mean of a crop (replicated border: close, not exact) and its shape
    blurred = augment(crops, replace(NO_AUGMENT, blur=1.0, blur_sigma=(1.5, 1.5)), g)
    assert not torch.equal(blurred, base)
    assert torch.allclose(blurred.mean(dim=(2, 3)), base.mean(dim=(2, 3)), atol=3.0)
    # a zoom alone resamples the crop
    zoomed = augment(crops, replace(NO_AUGMENT, scale=(1.1, 1.1)), g)
    assert not torch.equal(zoomed, base)


def test_jpeg_mix() -> None:
    crops = _crops()
    rng = np.random.default_rng(0)
    assert jpeg_mix(crops, replace(NO_AUGMENT, jpeg=0.0), rng) is crops
    out = jpeg_mix(crops, replace(NO_AUGMENT, jpeg=1.0, jpeg_quality=(20, 20)), rng)
    assert out.shape == crops.shape and out.dtype == np.uint8
    assert all(not np.array_equal(o, c) for o, c in zip(out, crops, strict=True))
    # channels stay in RGB order: a red crop comes back red
    red = np.zeros((1, S, S, 3), np.uint8)
    red[..., 0] = 200
    back = jpeg_mix(red, replace(NO_AUGMENT, jpeg=1.0, jpeg_quality=(50, 50)), rng)
    assert back[0, 16, 16, 0] > 180 and back[0, 16, 16, 1:].max() < 20


def _cropset(names: list[str], per: int = 3) -> CropSet:
    keys = [f"{n}_{i:04d}" for n in names for i in range(1, per + 1)]
    labels = np.repeat(np.arange(len(names)), per).astype(np.int64)
    crops = _crops(len(keys))
    return CropSet(Path("/nowhere"), keys, [""] * len(keys), names, labels, crops)


def test_dataset_items_are_seeded_by_epoch_and_standardised() -> None:
    ds = FaceDataset(_cropset(["A_A", "B_B"]), AugmentConfig(), seed=7)
    assert len(ds) == 6
    x, label = ds[4]
    assert x.shape == (3, S, S) and label == 1
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-3
    again, _ = ds[4]
    ds.set_epoch(1)
    other, _ = ds[4]
    assert torch.equal(x, again) and not torch.equal(x, other)
    plain = FaceDataset(_cropset(["A_A", "B_B"]), NO_AUGMENT)
    ref = standardize(to_float_nchw(torch.from_numpy(plain.set.crops[4:5])))[0]  # type: ignore[index]
    assert torch.equal(plain[4][0], ref)


def _folds(n_folds: int = 4, per_fold: int = 3) -> tuple[list[str], list[Pair]]:
    names, pairs = [], []
    for f in range(n_folds):
        fold = [f"P{f}_{j}" for j in range(per_fold)]
        names += fold
        pairs += [Pair(f"{n}_0001", f"{n}_0002", True, f) for n in fold]
        pairs += [Pair(f"{fold[0]}_0001", f"{fold[1]}_0003", False, f)]
    return names, pairs


def test_lfw_split_never_trains_on_the_test_or_validation_fold() -> None:
    names, pairs = _folds()
    cs = _cropset([*names, "Nobody_Anywhere"])
    for test in range(4):
        split = lfw_split(cs, pairs, test)
        val = (test + 1) % 4
        held = {identity_of(k) for p in pairs if p.fold in (test, val) for k in (p.a, p.b)}
        assert held and not held & set(split.train)
        assert set(split.train) | held == set(cs.identities)
        assert "Nobody_Anywhere" in split.train and split.info["identities_in_no_fold"] == 1
        assert {p.fold for p in split.test_pairs} == {test}
        assert {p.fold for p in split.validation_pairs} == {val}
        assert lfw_split(cs, pairs, test).train == split.train
    with pytest.raises(FaceRecError) as err:
        lfw_split(cs, pairs, 1, val_fold=1)
    assert err.value.code == "invalid_split"
    shared = [*pairs, Pair("P0_0_0001", "P1_0_0001", False, 0)]
    with pytest.raises(FaceRecError) as err:
        lfw_split(cs, shared, 0)
    assert err.value.code == "folds_share_identities"


def test_identity_split_is_deterministic_and_by_identity() -> None:
    names = [f"Person_{i}" for i in range(30)]
    cs = _cropset(names)
    a, b = identity_split(cs, 0.2, seed=1), identity_split(cs, 0.2, seed=1)
    assert a.train == b.train and a.validation_pairs == b.validation_pairs
    held = {identity_of(k) for p in a.validation_pairs for k in (p.a, p.b)}
    assert len(held) == 6 and not held & set(a.train)
    assert identity_split(cs, 0.2, seed=2).train != a.train
