"""LFW's ten-fold fine-tuning protocol on one CUDA GPU, within a time budget.

Run from the repository root with ``PYTHONPATH=.``; it imports only torch, numpy, OpenCV,
matplotlib, tqdm and this project's ``training`` modules and the standard-library parts of
``facerec`` (``errors``, ``evaluation.pairs``, ``evaluation.metrics``), because the GPU
machine has nothing else. Inputs are what ``python -m training.gpu_carry`` builds: a pack of
aligned LFW crops (one JPEG file, an index, ``pairs.txt``) and the published weights in
float16.

What it does:

1. decodes every crop once into one uint8 tensor on the GPU, and a JPEG-re-compressed copy
   of each (on the CPU, once: the only augmentation that does not run on the GPU);
2. measures the training speed on a few steps and fits the epochs of every fold to the
   time budget (a deadline per fold stops training early if it runs slow);
3. for each test fold: fine-tunes the whole network (bfloat16 autocast, channels-last,
   P x K batches, augmentation on the GPU), selects the epoch on the validation fold,
   scores the test fold at the validation fold's threshold with the PyTorch model in
   float32 and flip averaging; the published weights are scored the same way;
4. writes ``OUT/metrics.json``, ``OUT/folds.png`` and ``OUT/curves.png`` after every fold,
   and one fold's fine-tuned weights (float16, split into files under 16 MiB) for checking
   on the serving path.

Example (the coordinator's call 2)::

    PYTHONPATH=. python -m training.gpu_tenfold --pack .gpu/crops \
        --weights /tmp/facerec-gpu/facenet128.half.pt --out "$OUT" --time-budget 380
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.evaluation.pairs import read_pairs
from training.augment import AugmentConfig
from training.checkpoint import load_weights, save_split_weights
from training.data import PKSampler, read_pack
from training.engines import FullEngine, jpeg_copies
from training.finetune import RunOutput, TrainConfig
from training.inception_resnet_v1 import InceptionResnetV1
from training.network import freeze, set_train_mode
from training.protocol import lfw_tenfold
from training.splits import lfw_split
from training.triplet import triplet_loss

log = logging.getLogger("gpu_tenfold")
ALLOWED_ROOTS = {"torch", "numpy", "cv2", "matplotlib", "tqdm", "training", "facerec"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", type=Path, required=True, help="crop pack (with pairs.txt)")
    p.add_argument(
        "--weights",
        type=Path,
        nargs="+",
        required=True,
        help="starting weights; the first that exists is used",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/facerec-gpu-run"))
    p.add_argument("--time-budget", type=float, default=380.0, help="seconds, all included")
    p.add_argument("--folds", default="0,1,2,3,4,5,6,7,8,9")
    p.add_argument("--save-fold", type=int, default=0, help="fold whose weights come back")
    p.add_argument("--part-mib", type=float, default=15.9, help="largest weights file")
    p.add_argument("--p", type=int, default=96)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5, help="block8 and head (Adam)")
    p.add_argument("--trunk-lr-factor", type=float, default=0.2, help="layers up to mixed_7a")
    p.add_argument("--freeze-until", default="none")
    p.add_argument("--bn", choices=["frozen", "train"], default="frozen")
    p.add_argument("--mining", choices=["semi-hard", "batch-hard"], default="semi-hard")
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--min-epochs", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 4)
    p.add_argument("--measure-steps", type=int, default=8, help="timed steps (after 3 warm-up)")
    return p


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def _measure(
    cs: Any,
    train_idx: np.ndarray,
    cfg: TrainConfig,
    state: dict[str, Any],
    crops: torch.Tensor,
    jpeg: torch.Tensor | None,
    steps: int = 8,
    warm: int = 3,
) -> float:
    """Seconds per training step of this configuration (after warm-up steps)."""
    model = InceptionResnetV1()
    model.load_state_dict(state)
    freeze(model, cfg.freeze_until)
    engine = FullEngine(model.to(crops.device), crops, jpeg, cfg.augment, cfg.amp)
    set_train_mode(model, cfg.bn)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], 1e-12)
    sampler = PKSampler(cs.labels[train_idx], cfg.p, cfg.k, cfg.seed + 99, cfg.min_images)
    labels = torch.as_tensor(cs.labels, device=crops.device)
    batches = [train_idx[np.asarray(b)] for b in sampler] * (steps + warm)
    times = []
    for n, idx in enumerate(batches[: steps + warm]):
        if crops.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        g = torch.Generator(device=crops.device).manual_seed(n)
        loss, _ = triplet_loss(engine.forward(idx, g), labels[idx], cfg.margin, cfg.mining)
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        if crops.device.type == "cuda":
            torch.cuda.synchronize()
        if n >= warm:
            times.append(time.perf_counter() - t)
    del model, engine, opt
    return float(np.median(times))


def _plot_curves(work: Path, folds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for k in folds:
        d = work / f"fold-{k}"
        if (d / "log.csv").is_file():
            rows = np.genfromtxt(d / "log.csv", delimiter=",", names=True)
            rows = np.atleast_1d(rows)
            w = max(1, len(rows) // 25)
            loss = np.convolve(rows["loss"], np.ones(w) / w, mode="valid")
            a.plot(rows["step"][w - 1 :], loss, lw=1, label=f"fold {k}")
        if (d / "history.json").is_file():
            h = json.loads((d / "history.json").read_text())
            b.plot(
                [e["step"] for e in h],
                [100 * e["validation"]["accuracy_best_threshold"] for e in h],
                "o-",
                ms=2,
                lw=1,
                label=f"fold {k}",
            )
    a.set(xlabel="step", ylabel="triplet loss (running mean)", title="training loss")
    b.set(xlabel="step", ylabel="validation accuracy (%)", title="validation fold")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(args.out / "log.txt"),
    ]
    logging.basicConfig(
        level=logging.INFO,
        handlers=handlers,
        format="%(asctime)s %(relativeCreated)7.0fms %(message)s",
    )
    device = torch.device(args.device if torch.cuda.is_available() else "cpu")
    log.info(
        "torch %s, device %s %s",
        torch.__version__,
        device,
        torch.cuda.get_device_name(0) if device.type == "cuda" else "",
    )
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # float32 evaluation is float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    weights = next((w for w in args.weights if w.is_file()), None)
    if weights is None:
        log.error("no weights at %s", [str(w) for w in args.weights])
        return 2
    state = load_weights(weights)
    cs = read_pack(args.pack, threads=args.threads)
    pairs = read_pairs(args.pack / "pairs.txt")
    assert cs.crops is not None
    log.info(
        "decoded %d crops of %d identities from %s; weights %s",
        len(cs),
        len(cs.identities),
        args.pack,
        weights,
    )

    cfg = TrainConfig(
        freeze_until=None if args.freeze_until == "none" else args.freeze_until,
        bn=args.bn,
        epochs=args.max_epochs,
        p=args.p,
        k=args.k,
        mining=args.mining,
        lr=args.lr,
        trunk_lr_factor=args.trunk_lr_factor,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        augment=AugmentConfig(),
    )
    jpeg_np = jpeg_copies(cs.crops, cfg.augment, cfg.seed, threads=args.threads)
    crops = torch.from_numpy(cs.crops).to(device)
    jpeg = None if jpeg_np is None else torch.from_numpy(jpeg_np).to(device)
    log.info(
        "crops on %s (%.0f MB, with JPEG copies)",
        device,
        2 * cs.crops.nbytes / 1e6 if jpeg is not None else cs.crops.nbytes / 1e6,
    )

    folds = [int(x) for x in args.folds.split(",")]
    split0 = lfw_split(cs, pairs, folds[0])
    ids = set(split0.train)
    train_idx = np.array([i for i, lab in enumerate(cs.labels) if cs.identities[lab] in ids])
    sec_per_step = _measure(
        cs, train_idx, cfg, state, crops, jpeg, args.measure_steps, min(3, args.measure_steps)
    )
    steps_per_epoch = len(PKSampler(cs.labels[train_idx], cfg.p, cfg.k, cfg.seed))
    spent = time.monotonic() - t0
    budget = args.time_budget - spent - 15.0  # the last writes and a margin
    per_fold = budget / len(folds)
    # Per fold: two validations per epoch's worth of overhead, plus the start and the test.
    eval_s = 1.5
    epochs = int((per_fold - 3 * eval_s) / (steps_per_epoch * sec_per_step + eval_s))
    epochs = max(args.min_epochs, min(args.max_epochs, epochs))
    cfg = replace(cfg, epochs=epochs)
    images_per_s = cfg.p * cfg.k / sec_per_step
    log.info(
        "%.3f s/step (%.0f images/s), %d steps/epoch; %.0f s left for %d folds: %d epochs each",
        sec_per_step,
        images_per_s,
        steps_per_epoch,
        budget,
        len(folds),
        epochs,
    )

    args.work.mkdir(parents=True, exist_ok=True)
    for d in args.work.glob("fold-*"):
        shutil.rmtree(d)
    extra = {
        "path": "PyTorch float32 evaluation with flip averaging on the aligned crops as "
        "JPEG q{} (the pack); training bfloat16 autocast".format(
            json.loads((args.pack / "index.json").read_text())["jpeg_quality"]
        ),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "weights": str(weights),
        "measured": {
            "seconds_per_step": sec_per_step,
            "images_per_second": images_per_s,
            "steps_per_epoch": steps_per_epoch,
            "epochs_per_fold": epochs,
            "setup_seconds": round(spent, 1),
        },
        "jpeg_augmentation": "each crop re-compressed once on the CPU at a random quality "
        "35-90; a sample takes that copy with probability 0.3 (the other augmentations run "
        "on the GPU per sample)",
    }

    def on_fold(k: int, run: RunOutput, doc: dict[str, Any]) -> None:
        doc = {**doc, "elapsed_seconds": round(time.monotonic() - t0, 1)}
        _write_json(args.out / "metrics.json", doc)
        if (args.work / "folds.png").is_file():
            shutil.copyfile(args.work / "folds.png", args.out / "folds.png")
        _plot_curves(args.work, folds, args.out / "curves.png")
        test = run.metrics.get("test", {})
        base = run.metrics["baseline"].get("test", {})
        log.info(
            "fold %d done: test %.4f (published %.4f), best epoch %s, %s",
            k,
            test.get("accuracy", float("nan")),
            base.get("accuracy", float("nan")),
            run.metrics["best_epoch"],
            run.metrics["throughput"],
        )
        if k == args.save_fold:
            parts = save_split_weights(
                run.best_state, args.out / f"fold{k}", int(args.part_mib * 2**20)
            )
            log.info("fold %d weights: %s", k, ", ".join(p.name for p in parts))

    remaining = args.time_budget - (time.monotonic() - t0) - 15.0
    doc = lfw_tenfold(
        cs,
        pairs,
        cfg,
        state,
        lambda model, n: FullEngine(model.to(device), crops, jpeg, cfg.augment, cfg.amp),
        args.work,
        folds,
        {"base": {"model": "facenet128", "source": str(weights)}},
        progress=False,
        time_budget=remaining,
        save_checkpoints=False,
        on_fold=on_fold,
        extra=extra,
    )
    s = doc.get("summary", {})
    if "fine_tuned" in s:
        log.info(
            "DONE folds %s: fine-tuned %.4f ± %.4f, published %.4f ± %.4f, in %.0f s",
            s["folds_done"],
            s["fine_tuned"]["accuracy_mean"],
            s["fine_tuned"]["accuracy_std"],
            s["starting_model"]["accuracy_mean"],
            s["starting_model"]["accuracy_std"],
            time.monotonic() - t0,
        )
    leaked = sorted(
        {m.split(".")[0] for m in sys.modules}
        & {"pydantic", "fastapi", "onnxruntime", "gateway", "export", "onnx", "h5py"}
    )
    if leaked:
        log.warning("imported beyond the allowed set: %s", leaked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
