"""Conversion of the Keras FaceNet h5 into the PyTorch InceptionResnetV1.

Needs torch and h5py (the ``export`` extra). Tests that read the published weights are
skipped unless ``$FACEREC_HOME/weights/facenet_keras.h5`` exists (FACEREC_HOME defaults to
``~/.cache/facerec``). Corrupted variants are built as in-memory copies (h5py "core"
driver, no backing store), so nothing is written to disk.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("h5py")

import h5py
import torch

from training.facenet_keras import (
    ConversionError,
    ConversionReport,
    convert_facenet_keras,
    load_facenet_keras,
)
from training.inception_resnet_v1 import InceptionResnetV1

EXPECTED_ARRAYS = 490
EXPECTED_VALUES = 22_808_144
EXPECTED_LAYERS = 426

Mutation = Callable[[h5py.File], None]


def _weights_path() -> Path:
    home = Path(os.environ.get("FACEREC_HOME", Path.home() / ".cache" / "facerec"))
    return home / "weights" / "facenet_keras.h5"


@pytest.fixture(scope="module")
def h5_path() -> Path:
    path = _weights_path()
    if not path.is_file():
        pytest.skip(f"FaceNet Keras weights not present at {path}")
    return path


@pytest.fixture(scope="module")
def converted(h5_path: Path) -> tuple[InceptionResnetV1, ConversionReport]:
    return convert_facenet_keras(h5_path)


@pytest.fixture
def mutated_copy(h5_path: Path) -> Iterator[Callable[[Mutation], h5py.File]]:
    """Factory: an in-memory copy of the h5 with ``mutation`` applied to it."""
    opened: list[h5py.File] = []

    def make(mutation: Mutation) -> h5py.File:
        copy = h5py.File(f"facenet-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
        opened.append(copy)
        with h5py.File(h5_path, "r") as source:
            for key, value in source.attrs.items():
                copy.attrs[key] = value
            source.copy(source["model_weights"], copy, name="model_weights")
        mutation(copy)
        return copy

    yield make
    for file in opened:
        file.close()


def _prewhitened_batch(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(n, 3, 160, 160)).astype(np.float32)
    flat = x.reshape(n, -1)
    std = np.maximum(flat.std(axis=1), 1.0 / np.sqrt(flat.shape[1]))
    x = (flat - flat.mean(axis=1, keepdims=True)) / std[:, None]
    return torch.from_numpy(x.reshape(n, 3, 160, 160).astype(np.float32))


# --------------------------------------------------------------------------- no weights needed


def test_random_init_gives_unit_norm_embeddings() -> None:
    model = InceptionResnetV1().eval()
    with torch.no_grad():
        out = model(_prewhitened_batch(2))
    assert out.shape == (2, 128)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_facenet_keras(tmp_path / "absent.h5")


def test_non_hdf5_file_raises_conversion_error(tmp_path: Path) -> None:
    bogus = tmp_path / "facenet_keras.h5"
    bogus.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConversionError, match="not a readable HDF5"):
        load_facenet_keras(bogus)


# --------------------------------------------------------------------------- published weights


def test_every_array_used_once_and_every_tensor_filled(
    h5_path: Path, converted: tuple[InceptionResnetV1, ConversionReport]
) -> None:
    model, report = converted
    with h5py.File(h5_path, "r") as file:
        sizes: list[int] = []
        file["model_weights"].visititems(
            lambda _name, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None
        )
    assert len(sizes) == EXPECTED_ARRAYS
    assert sum(sizes) == EXPECTED_VALUES
    assert report.arrays_used == EXPECTED_ARRAYS
    assert report.values_used == EXPECTED_VALUES
    assert report.tensors_from_file == EXPECTED_ARRAYS
    assert report.layers_checked == EXPECTED_LAYERS
    state = model.state_dict()
    assert len(state) == report.tensors_from_file + report.tensors_constant

    batch_norms = [
        m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)
    ]
    assert len(batch_norms) == 112
    for bn in batch_norms:
        assert bn.eps == pytest.approx(1e-3)
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        running_var = bn.running_var
        assert isinstance(running_var, torch.Tensor)
        assert bool((running_var > 0).all())


def test_loaded_model_outputs_unit_norm_128d(
    converted: tuple[InceptionResnetV1, ConversionReport],
) -> None:
    model, _ = converted
    assert not model.training
    x = _prewhitened_batch(3, seed=1)
    with torch.no_grad():
        out = model(x)
        again = model(x[:1])
    assert out.shape == (3, 128)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(again, out[:1], rtol=1e-5, atol=1e-6)
    # Different inputs must not collapse onto one embedding.
    assert float(out[0] @ out[1]) < 0.999


def _replace(path: str, data: np.ndarray) -> Mutation:
    def mutate(file: h5py.File) -> None:
        del file[path]
        file[path] = data

    return mutate


def _delete(layer: str, weight: str) -> Mutation:
    def mutate(file: h5py.File) -> None:
        group = file["model_weights"][layer]
        del group[f"{layer}/{weight}"]
        names = [n for n in group.attrs["weight_names"] if n.decode() != f"{layer}/{weight}"]
        group.attrs["weight_names"] = np.array(names)

    return mutate


def _add_bias(layer: str, size: int) -> Mutation:
    def mutate(file: h5py.File) -> None:
        group = file["model_weights"][layer]
        group[f"{layer}/bias:0"] = np.zeros(size, dtype=np.float32)
        names = [*group.attrs["weight_names"], f"{layer}/bias:0".encode()]
        group.attrs["weight_names"] = np.array(names)

    return mutate


def _edit_config(layer: str, key: str, value: object) -> Mutation:
    def mutate(file: h5py.File) -> None:
        config = json.loads(file.attrs["model_config"])
        for entry in config["config"]["layers"]:
            if entry["name"] == layer:
                target = entry["config"]
                *parents, leaf = key.split(".")
                for parent in parents:
                    target = target[parent]
                target[leaf] = value
        file.attrs["model_config"] = json.dumps(config)

    return mutate


KERNEL = "model_weights/Block17_3_Conv2d_1x1/Block17_3_Conv2d_1x1/kernel:0"
MEAN = "model_weights/Conv2d_4a_3x3_BatchNorm/Conv2d_4a_3x3_BatchNorm/moving_mean:0"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        pytest.param(
            _replace(KERNEL, np.zeros((1, 1, 256, 895), np.float32)),
            r"Block17_3_Conv2d_1x1/kernel:0.*\(1, 1, 256, 895\).*HWIO \(1, 1, 256, 896\)",
            id="wrong-kernel-shape",
        ),
        pytest.param(
            _replace(KERNEL, np.zeros((896, 256, 1, 1), np.float32)),
            r"Block17_3_Conv2d_1x1/kernel:0.*\(896, 256, 1, 1\)",
            id="kernel-stored-oihw",
        ),
        pytest.param(
            _replace(MEAN, np.zeros(193, np.float32)),
            r"moving_mean:0.*\(193,\).*running_mean.*\(192,\)",
            id="wrong-bn-shape",
        ),
        pytest.param(
            _replace(MEAN, np.zeros(192, np.float64)),
            r"moving_mean:0.*float64",
            id="wrong-dtype",
        ),
        pytest.param(
            _replace(MEAN, np.full(192, np.nan, np.float32)),
            r"moving_mean:0.*NaN",
            id="nan",
        ),
        pytest.param(
            _delete("Conv2d_4a_3x3_BatchNorm", "moving_mean:0"),
            r"Conv2d_4a_3x3_BatchNorm/moving_mean:0' missing",
            id="missing-array",
        ),
        pytest.param(
            _add_bias("Bottleneck", 128),
            r"left unused: Bottleneck/Bottleneck/bias:0",
            id="extra-array",
        ),
        pytest.param(
            _edit_config("Block8_2_ScaleSum", "arguments.scale", 0.3),
            r"Block8_2_ScaleSum: residual scale 0.3",
            id="lambda-scale",
        ),
        pytest.param(
            _edit_config("Block35_1_Branch_0_Conv2d_1x1_BatchNorm", "epsilon", 1e-5),
            r"Block35_1_Branch_0_Conv2d_1x1_BatchNorm: epsilon",
            id="bn-epsilon",
        ),
        pytest.param(
            _edit_config("Bottleneck_BatchNorm", "scale", True),
            r"Bottleneck_BatchNorm: scale=True",
            id="bn-gamma",
        ),
        pytest.param(
            _edit_config("Mixed_6a_Branch_1_Conv2d_0b_3x3", "padding", "valid"),
            r"Mixed_6a_Branch_1_Conv2d_0b_3x3: Keras padding 'valid'",
            id="padding",
        ),
    ],
)
def test_corrupted_file_raises(
    mutated_copy: Callable[[Mutation], h5py.File], mutation: Mutation, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        convert_facenet_keras(mutated_copy(mutation))
