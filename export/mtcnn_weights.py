"""Load facenet-pytorch's MTCNN state dicts into :mod:`training.mtcnn` modules.

The three files (``pnet.pt``, ``rnet.pt``, ``onet.pt`` from the facenet-pytorch 2.6.0
wheel) are plain ``OrderedDict[str, Tensor]`` pickles, read with ``weights_only=True`` so
that no arbitrary code runs. Loading is strict: every key of a file must name a tensor of
the module, every tensor of the module must be filled, and shapes must agree; anything
else raises :class:`ConversionError` naming the offending key.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from training.errors import ConversionError
from training.mtcnn import ONet, PNet, RNet

__all__ = ["ConversionError", "load_mtcnn", "load_state_dict_strict"]

logger = logging.getLogger(__name__)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read ``path`` as a ``str -> Tensor`` mapping, safely (``weights_only=True``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ConversionError(f"{path}: not a loadable state dict: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ConversionError(f"{path}: key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: key {key!r} holds {type(value).__name__}, not a tensor")
        state[key] = value
    return state


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Copy ``state`` into ``module``, requiring a one-to-one match of keys and shapes.

    Args:
        module: the module to fill (its parameters and persistent buffers).
        state: tensors by name, as in ``module.state_dict()``.
        source: a label for error messages (usually the file path).

    Raises:
        ConversionError: a key of ``state`` is not a module tensor, a module tensor has no
            key in ``state``, a shape differs, or a value is not a finite floating tensor.
    """
    expected = module.state_dict()
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        key = unexpected[0]
        raise ConversionError(
            f"{source}: unexpected key {key!r} with shape {tuple(state[key].shape)} "
            f"(not in {type(module).__name__}); all unexpected: {unexpected}"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        key = missing[0]
        raise ConversionError(
            f"{source}: missing key {key!r}, {type(module).__name__} expects shape "
            f"{tuple(expected[key].shape)}; all missing: {missing}"
        )
    converted: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ConversionError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, "
                f"{type(module).__name__} expects {tuple(target.shape)}"
            )
        if not value.is_floating_point():
            raise ConversionError(f"{source}: key {key!r} has dtype {value.dtype}, expected float")
        if not bool(torch.isfinite(value).all()):
            raise ConversionError(f"{source}: key {key!r} contains NaN or inf")
        converted[key] = value.to(dtype=target.dtype)
    # Every key was checked above, so a strict load cannot fail; it also fills every tensor.
    module.load_state_dict(converted, strict=True)


def _load_one(module: nn.Module, path: Path) -> nn.Module:
    """Fill ``module`` from the state dict at ``path`` and switch it to eval mode."""
    state = _read_state_dict(path)
    load_state_dict_strict(module, state, source=str(path))
    n_values = sum(t.numel() for t in state.values())
    logger.info(
        "loaded %s from %s: %d tensors, %d values",
        type(module).__name__,
        path,
        len(state),
        n_values,
    )
    return module.eval()


def load_mtcnn(pnet_pt: Path, rnet_pt: Path, onet_pt: Path) -> tuple[PNet, RNet, ONet]:
    """Build P-Net, R-Net and O-Net from facenet-pytorch's ``.pt`` state dicts.

    Args:
        pnet_pt: path of ``pnet.pt``.
        rnet_pt: path of ``rnet.pt``.
        onet_pt: path of ``onet.pt``.

    Returns:
        ``(pnet, rnet, onet)`` in eval mode, on CPU, float32.

    Raises:
        ConversionError: a file is not a state dict of tensors or does not match its module
            exactly (see :func:`load_state_dict_strict`).
        FileNotFoundError: a path does not exist.
    """
    pnet = PNet()
    rnet = RNet()
    onet = ONet()
    _load_one(pnet, Path(pnet_pt))
    _load_one(rnet, Path(rnet_pt))
    _load_one(onet, Path(onet_pt))
    return pnet, rnet, onet
