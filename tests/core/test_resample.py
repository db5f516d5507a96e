"""The detector's area resampler reproduces PyTorch's ``interpolate(mode="area")`` to
within one unit in the last place."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facerec.imaging.resample import AreaSampler  # noqa: E402


def _assert_within_one_ulp(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    gap = np.abs(ours - theirs)
    assert np.all(gap <= np.spacing(np.abs(theirs)))


def _torch_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(x, size=(height, width), mode="area")
    return np.asarray(out[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize(("h", "w"), [(250, 250), (37, 91), (480, 640)])
def test_levels_match_pytorch_area(h: int, w: int) -> None:
    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    sampler = AreaSampler(image)
    for out_h, out_w in [(12, 12), (h // 2 + 1, w // 3 + 1), (int(h * 0.6 + 1), int(w * 0.6 + 1))]:
        first = sampler.resize(out_h, out_w)
        _assert_within_one_ulp(first, _torch_area(image, out_h, out_w))
        assert np.array_equal(sampler.resize(out_h, out_w), first)  # cached plan, same result


def test_crops_match_pytorch_area_of_the_region() -> None:
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    x0, y0 = np.array([0, 10, 101]), np.array([0, 33, 60])
    x1, y1 = np.array([160, 47, 160]), np.array([120, 50, 119])
    crops = AreaSampler(image).crops(x0, y0, x1, y1, 24)
    for k in range(3):
        region = image[y0[k] : y1[k], x0[k] : x1[k]]
        _assert_within_one_ulp(crops[k], _torch_area(region, 24, 24))
