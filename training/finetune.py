"""One fine-tuning run: train on a split's identities, select the epoch on its validation
pairs, score its test pairs with the threshold chosen on the validation pairs.

The run is the same on both paths; only the step differs (:mod:`training.engines`). Epoch
0 is the starting model, evaluated before any step, and it competes with the trained
epochs for "best": a fine-tune that never beats it on validation returns it unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from facerec.evaluation.metrics import roc_curve, threshold_at_far
from training.augment import AugmentConfig
from training.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from training.data import CropSet, PKSampler
from training.errors import TrainingConfigError
from training.evaluate import heldout_accuracy, pair_scores, verification
from training.inception_resnet_v1 import InceptionResnetV1
from training.network import (
    BnMode,
    freeze,
    set_train_mode,
    split_index,
    stages,
    trainable_parameters,
)
from training.splits import Split
from training.triplet import FACENET_MARGIN, Mining, triplet_loss

log = logging.getLogger(__name__)

Optimizer = Literal["adam", "adamw", "sgd", "adagrad"]
Schedule = Literal["cosine", "step", "constant"]


@dataclass
class TrainConfig:
    """Everything that decides a run's result (written to ``config.json``)."""

    freeze_until: str | None = "mixed_7a"
    bn: BnMode = "frozen"
    epochs: int = 6
    p: int = 32
    k: int = 4
    margin: float = FACENET_MARGIN
    mining: Mining = "semi-hard"
    optimizer: Optimizer = "adam"
    lr: float = 5e-5
    trunk_lr_factor: float = 1.0  # LR multiplier for the layers up to mixed_7a (when trained)
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    step_epochs: int = 2
    step_gamma: float = 0.3
    seed: int = 0
    min_images: int = 2
    amp: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_every: int = 0  # steps between validations (0: once per epoch)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    model: InceptionResnetV1
    device: torch.device

    def forward(self, idx: np.ndarray, g: torch.Generator) -> Tensor: ...
    def embed(self, indices: Any, batch: int = 256) -> np.ndarray: ...


def param_groups(model: InceptionResnetV1, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the layers after ``mixed_7a`` at ``cfg.lr``, the
    layers up to it (trained only on the whole-network path) at ``lr * trunk_lr_factor``."""
    n = split_index(model, "mixed_7a")
    trunk = {id(q) for _, m in stages(model)[:n] for q in m.parameters()}
    late = [q for q in trainable_parameters(model) if id(q) not in trunk]
    early = [q for q in trainable_parameters(model) if id(q) in trunk]
    groups = [{"params": late, "lr": cfg.lr}]
    if early:
        groups.append({"params": early, "lr": cfg.lr * cfg.trunk_lr_factor})
    return groups


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, cfg.lr, weight_decay=cfg.weight_decay)
    raise TrainingConfigError(f"unknown optimiser {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, total: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a factor of ``cfg.lr`` at each step: linear warm-up, then cosine
    decay to 0 over the run, steps of ``step_gamma`` every ``step_epochs``, or constant."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return float(cfg.step_gamma ** (step // max(1, cfg.step_epochs * steps_per_epoch)))
        return 1.0

    return factor


@dataclass
class RunOutput:
    """The run's metrics, the selected epoch's weights and the last epoch's."""

    metrics: dict[str, Any]
    best_state: dict[str, Tensor]
    history: list[dict[str, Any]]
    last_state: dict[str, Tensor]


def _selection_key(entry: dict[str, Any]) -> tuple[float, float]:
    """Validation accuracy (the protocol's pairs); ties, frequent when it saturates at
    600 pairs, go to the AUC over the larger selection pairs (or the same pairs')."""
    v = entry["validation"]
    return (v["accuracy_best_threshold"], v.get("selection_auc", v["auc"]))


def _plot(
    history: list[dict[str, Any]], steps: list[tuple[int, float]], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    if steps:
        s, loss = np.array(steps).T
        a.plot(s, loss, lw=0.6, alpha=0.5, label="batch")
        w = max(1, len(loss) // 30)
        if len(loss) >= w:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            a.plot(s[w - 1 :], smooth, lw=1.5, label=f"mean of {w}")
    a.set_xlabel("step")
    a.set_ylabel("triplet loss")
    a.set_title("training loss")
    a.legend()
    a.grid(alpha=0.3)
    x = [h["step"] for h in history]
    acc = [100 * h["validation"]["accuracy_best_threshold"] for h in history]
    b.plot(x, acc, "o-", label="accuracy")
    b.set_xlabel("step")
    b.set_ylabel("validation accuracy (%)")
    b2 = b.twinx()
    b2.plot(x, [h["validation"]["auc"] for h in history], "s--", color="C1", label="AUC")
    b2.set_ylabel("validation AUC")
    b.set_title("validation pairs")
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_training(
    cs: CropSet,
    split: Split,
    cfg: TrainConfig,
    init_state: dict[str, Tensor],
    make_engine: Callable[[InceptionResnetV1, int], Engine],
    out: Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    deadline: float | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    save_checkpoints: bool = True,
) -> RunOutput:
    """Train, validate and test one split. ``make_engine(model, n_frozen)`` builds the step
    (the model already frozen); ``deadline`` (``time.monotonic()``) ends training early
    (the best epoch so far is used); ``stop_after_epochs`` stops as if interrupted (for
    resuming). With ``out``: ``config.json``, ``log.csv``, ``history.json``,
    ``curves.png``, ``metrics.json``, ``best.pt`` and ``last.pt`` (resumable)."""
    key_index = cs.key_index()
    train_ids = set(split.train)
    train_idx = np.array(
        [i for i, lab in enumerate(cs.labels) if cs.identities[lab] in train_ids], np.int64
    )
    sampler = PKSampler(cs.labels[train_idx], cfg.p, cfg.k, cfg.seed, cfg.min_images)
    steps_per_epoch = len(sampler)
    total = steps_per_epoch * cfg.epochs

    model = InceptionResnetV1()
    model.load_state_dict(init_state)
    freeze(model, cfg.freeze_until)
    n_frozen = split_index(model, cfg.freeze_until)
    engine = make_engine(model, n_frozen)
    device = engine.device
    model.to(device)
    optimizer = make_optimizer(param_groups(model, cfg), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total, steps_per_epoch))
    labels_dev = torch.as_tensor(cs.labels, device=device)

    val_all = [*split.validation_pairs, *split.selection_pairs]
    val_keys = sorted({k for p in val_all for k in (p.a, p.b)})
    test_keys = sorted({k for p in split.test_pairs for k in (p.a, p.b)})
    val_local = {k: i for i, k in enumerate(val_keys)}
    test_local = {k: i for i, k in enumerate(test_keys)}
    selection: dict[str, Any] = {}

    def evaluate(which: str) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the validation (or test) pairs; validating also scores the selection
        pairs into ``selection``."""
        if which == "test":
            emb = engine.embed([key_index[k] for k in test_keys])
            return pair_scores(emb, test_local, split.test_pairs)
        emb = engine.embed([key_index[k] for k in val_keys])
        selection.clear()
        if split.selection_pairs:
            s, y = pair_scores(emb, val_local, split.selection_pairs)
            selection["selection_auc"] = roc_curve(s, y).auc
            selection["selection_tar_at_far_1e-3"] = threshold_at_far(s, y, 1e-3)[1]
            selection["selection_pairs"] = len(s)
        return pair_scores(emb, val_local, split.validation_pairs)

    def validate() -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        val_s, val_y = evaluate("validation")
        return {**verification(val_s, val_y), **selection}, val_s, val_y

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    step_losses: list[tuple[int, float]] = []
    start_epoch, step = 0, 0
    best_key: tuple[float, float] | None = None
    best_state: dict[str, Tensor] = {}
    best_entry: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    train_seconds, train_images = 0.0, 0

    if resume and out is not None and (out / "last.pt").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        ts = ckpt["train_state"]
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        start_epoch, step = ts["epoch"], ts["step"]
        history, step_losses = ts["history"], [tuple(x) for x in ts["step_losses"]]
        baseline = ts["baseline"]
        train_seconds, train_images = ts["train_seconds"], ts["train_images"]
        best_state = load_checkpoint(out / "best.pt")["model"]
        best_entry = next(h for h in history if h["epoch"] == ts["best_epoch"])
        best_key = _selection_key(best_entry)
        log.info("resumed %s at epoch %d, step %d", out, start_epoch, step)
    else:
        figures, val_s, val_y = validate()
        entry: dict[str, Any] = {"epoch": 0, "step": 0, "validation": figures}
        if split.test_pairs:
            test_s, test_y = evaluate("test")
            baseline = {"test": heldout_accuracy(test_s, test_y, val_s, val_y)}
            baseline["test"]["scores"] = [round(float(x), 6) for x in test_s]
        baseline["validation"] = entry["validation"]
        history.append(entry)
        best_key, best_entry = _selection_key(entry), entry
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def run_meta(epoch: int) -> dict[str, Any]:
        return {
            **(meta or {}),
            "config": cfg.to_json(),
            "split": split.info,
            "identities": sorted(train_ids),
            "epoch": epoch,
        }

    def save(epoch: int) -> None:
        if out is None or not save_checkpoints:
            return
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "history": history,
            "step_losses": step_losses,
            "baseline": baseline,
            "best_epoch": best_entry["epoch"],
            "train_seconds": train_seconds,
            "train_images": train_images,
        }
        save_checkpoint(out / "last.pt", model, run_meta(epoch), train_state)

    bar = tqdm(total=total, initial=step, unit="step", desc="train", disable=not progress)
    csv_rows: list[dict[str, Any]] = []
    stopped = "epochs"
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            stopped = "interrupted"
            break
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
        set_train_mode(model, cfg.bn)
        epoch_start = time.perf_counter()
        for batch in sampler:
            idx = train_idx[np.asarray(batch)]
            g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            emb = engine.forward(idx, g)
            loss, stats = triplet_loss(emb, labels_dev[idx], cfg.margin, cfg.mining)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            step_losses.append((step, value))
            csv_rows.append(
                {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": round(value, 6),
                    "active": round(stats.active, 4),
                    "d_ap": round(stats.d_ap, 5),
                    "d_an": round(stats.d_an, 5),
                    "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", active=f"{stats.active:.2f}")
            train_images += len(idx)
            if deadline is not None and time.monotonic() > deadline:
                stopped = "deadline"
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - epoch_start
        figures, val_s, val_y = validate()
        recent = [v for _, v in step_losses[-steps_per_epoch:]]
        entry = {
            "epoch": epoch + 1,
            "step": step,
            "validation": figures,
            "loss": float(np.mean(recent)) if recent else None,
        }
        history.append(entry)
        if best_key is None or _selection_key(entry) > best_key:
            best_key, best_entry = _selection_key(entry), entry
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None and save_checkpoints:
                save_checkpoint(out / "best.pt", _as_model(best_state), run_meta(epoch + 1))
        bar.set_postfix(val=f"{entry['validation']['accuracy_best_threshold']:.4f}")
        log.info("epoch %d: validation %s", epoch + 1, entry["validation"])
        save(epoch + 1)
        if out is not None:
            _append_csv(out / "log.csv", csv_rows)
            csv_rows = []
        if stopped == "deadline":
            break
    bar.close()
    if out is not None and csv_rows:
        _append_csv(out / "log.csv", csv_rows)

    metrics: dict[str, Any] = {
        "config": cfg.to_json(),
        "split": split.info,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "stopped_by": stopped,
        "best_epoch": best_entry["epoch"],
        "validation": best_entry["validation"],
        "baseline": baseline,
        "history": history,
        "throughput": {
            "train_images": train_images,
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(train_images / train_seconds, 2) if train_seconds else None,
            "device": str(device),
        },
        "weights_sha256": weights_sha256(best_state),
    }
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if split.test_pairs and stopped != "interrupted":
        model.load_state_dict(best_state)
        val_s, val_y = evaluate("validation")
        test_s, test_y = evaluate("test")
        metrics["test"] = heldout_accuracy(test_s, test_y, val_s, val_y)
        metrics["test"]["scores"] = [round(float(x), 6) for x in test_s]
        metrics["test"]["same"] = [bool(x) for x in test_y]
    if out is not None:
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        (out / "history.json").write_text(json.dumps(history, indent=2))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if save_checkpoints and not (out / "best.pt").is_file():
            save_checkpoint(out / "best.pt", _as_model(best_state), run_meta(0))
        _plot(history, step_losses, out / "curves.png", f"{out.name}: {cfg.mining} triplets")
    return RunOutput(metrics, best_state, history, last_state)


def _as_model(state: dict[str, Tensor]) -> InceptionResnetV1:
    model = InceptionResnetV1()
    model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    return model


def _append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
