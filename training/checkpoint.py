"""Training checkpoints: what they hold, how they are checked, and the weights' identity.

A checkpoint is a ``torch.save`` dict (loaded with ``weights_only=True``)::

    format        "facerec-checkpoint/1"
    architecture  "inception_resnet_v1"      embedding_size  128
    model         the whole network's state dict (float32)
    weights_sha256  :func:`weights_sha256` of ``model``
    meta          JSON-able: base model, training identities, LFW folds, config, metrics
    train_state   (``last.pt`` only) optimiser, schedule, epoch, history: for resuming

Anything else (another architecture's state dict, another embedding size, a random
file) is refused with :class:`CheckpointError` before any output is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from training.errors import CheckpointError
from training.inception_resnet_v1 import InceptionResnetV1

FORMAT = "facerec-checkpoint/1"
ARCHITECTURE = "inception_resnet_v1"


def weights_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 over every tensor of ``state`` in name order (name, dtype, shape, float32
    bytes): the model's content identity, independent of how the file was written."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    path: Path,
    model: InceptionResnetV1,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint atomically (a temporary file renamed); returns its weights'
    SHA-256."""
    state = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    sha = weights_sha256(state)
    obj: dict[str, Any] = {
        "format": FORMAT,
        "architecture": ARCHITECTURE,
        "embedding_size": model.embedding_size,
        "model": state,
        "weights_sha256": sha,
        "meta": json.loads(json.dumps(meta, default=str)),  # plain types: weights_only loads
    }
    if train_state is not None:
        obj["train_state"] = train_state
    _atomic_save(obj, path)
    return sha


def _check_state(state: dict[str, Any], embedding_size: int, what: str) -> None:
    expected = InceptionResnetV1(embedding_size).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k
        for k in set(expected) & set(state)
        if not isinstance(state[k], Tensor) or tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise CheckpointError(
            f"{what} does not hold an Inception-ResNet-v1 ({embedding_size}-d) of this "
            f"project ({detail})",
            code="wrong_architecture",
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint. Raises :class:`CheckpointError`:
    ``checkpoint_not_found``, ``not_a_checkpoint`` (not a torch file, or a dict without
    our format), ``wrong_architecture`` (another network, or other tensor names/shapes)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}", code="checkpoint_not_found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__})", code="not_a_checkpoint"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") != FORMAT:
        if all(isinstance(v, Tensor) for v in obj.values()) and obj:
            raise CheckpointError(
                f"{path} is a bare state dict, not a facerec checkpoint; "
                + _architecture_hint(obj),
                code="wrong_architecture",
            )
        raise CheckpointError(f"{path} is not a facerec checkpoint (no format {FORMAT!r})")
    if obj.get("architecture") != ARCHITECTURE:
        raise CheckpointError(
            f"{path} is a {obj.get('architecture')!r} checkpoint; only {ARCHITECTURE} "
            "(FaceNet's Inception-ResNet-v1) can be exported",
            code="wrong_architecture",
        )
    _check_state(obj["model"], int(obj.get("embedding_size", 128)), str(path))
    return obj


def _architecture_hint(state: dict[str, Tensor]) -> str:
    try:
        _check_state(state, 128, "it")
    except CheckpointError as exc:
        return exc.message
    return "its tensors fit Inception-ResNet-v1: re-save it with `facerec train`"


def model_from_checkpoint(ckpt: dict[str, Any]) -> InceptionResnetV1:
    """The network of a checkpoint returned by :func:`load_checkpoint` (eval mode)."""
    model = InceptionResnetV1(int(ckpt.get("embedding_size", 128)))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def save_half_weights(model: InceptionResnetV1, path: Path, keep_float_below: int = 65536) -> int:
    """The network's weights in float16 (tensors under ``keep_float_below`` elements, batch
    norm statistics included, stay float32): half the size, for carrying to a GPU machine
    or back. Returns the file size."""
    state = {
        k: v.detach().cpu().half()
        if v.is_floating_point() and v.numel() >= keep_float_below
        else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    _atomic_save({"format": "facerec-half-weights/1", "model": state}, path)
    return path.stat().st_size


def load_weights(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A float32 state dict from a checkpoint, a half-weights file, the parts of one
    (``NAME.part0.pt``, ``NAME.part1.pt``, ... given as ``NAME.part0.pt``) or a bare state
    dict; :class:`CheckpointError` (``wrong_architecture``) unless it is this project's
    Inception-ResNet-v1."""
    parts = [path]
    if path.name.endswith(".part0.pt"):
        stem = path.name[: -len(".part0.pt")]
        parts = sorted(
            path.parent.glob(f"{stem}.part*.pt"), key=lambda p: int(p.name.split(".part")[1][:-3])
        )
    state: dict[str, Tensor] = {}
    for part in parts:
        if not part.is_file():
            raise CheckpointError(f"no weights at {part}", code="checkpoint_not_found")
        try:
            obj = torch.load(part, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{part} is not a PyTorch file ({type(exc).__name__})", code="not_a_checkpoint"
            ) from None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            obj = load_checkpoint(part, map_location)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            state.update(obj["model"])
        elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            state.update(obj)
        else:
            raise CheckpointError(f"{part} holds no network weights", code="not_a_checkpoint")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _check_state(state, 128, str(path))
    return state


def save_split_weights(state: dict[str, Tensor], stem: Path, max_bytes: int) -> list[Path]:
    """``state`` (float16 for large tensors) split into files ``STEM.partN.pt`` of at most
    about ``max_bytes`` each (a file-size limit on what comes back from a GPU machine)."""
    half = {
        k: v.detach().cpu().half()
        if v.is_floating_point() and v.numel() >= 65536
        else v.detach().cpu()
        for k, v in state.items()
    }
    # First fit, largest tensors first: the fewest files under the limit.
    room = max_bytes - 65536  # pickling overhead
    groups: list[dict[str, Tensor]] = []
    free: list[int] = []
    for k in sorted(half, key=lambda name: -half[name].numel() * half[name].element_size()):
        n = half[k].numel() * half[k].element_size()
        slot = next((i for i, f in enumerate(free) if f >= n), None)
        if slot is None:
            groups.append({})
            free.append(room)
            slot = len(groups) - 1
        groups[slot][k] = half[k]
        free[slot] -= n
    paths = []
    for i, group in enumerate(groups):
        p = stem.with_name(f"{stem.name}.part{i}.pt")
        _atomic_save({"format": "facerec-half-weights/1", "model": group}, p)
        paths.append(p)
    return paths
