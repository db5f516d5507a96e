"""``facerec train``: triplet-loss fine-tuning of FaceNet (registered through the
``facerec.commands`` entry point; torch loads only when the command runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from facerec.cli.output import emit
from facerec.errors import FaceRecError


class TrainingToolsMissingError(FaceRecError):
    code = "training_tools_missing"
    http_status = 503


def _folds(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune FaceNet with the triplet loss on aligned crops",
        description="Fine-tune the published FaceNet (or a checkpoint) with FaceNet's triplet "
        "loss (squared distances, margin 0.2, online semi-hard or batch-hard mining) on crops "
        "made by `facerec prepare-dataset`. Splits are by identity: LFW View 2 folds "
        "(--lfw-pairs) or a seeded hash (--val-fraction). On a CPU the layers up to "
        "--freeze-until are frozen and their outputs cached once per crop version; on a GPU "
        "the whole network trains (--freeze-until none).",
        epilog="LFW's honest protocol: facerec train --data CROPS --lfw-pairs "
        "../shared/datasets/lfw/pairs.txt --ten-fold --out RUN",
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="aligned crops")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    s = p.add_argument_group("split")
    s.add_argument("--lfw-pairs", type=Path, default=None, metavar="FILE", help="LFW pairs.txt")
    s.add_argument("--test-fold", type=int, default=None, help="LFW fold to hold out for testing")
    s.add_argument("--ten-fold", action="store_true", help="the whole ten-fold protocol")
    s.add_argument("--folds", type=_folds, default=None, help="with --ten-fold: e.g. 0,1,2")
    s.add_argument("--val-fraction", type=float, default=0.1, help="identities held out (0.1)")
    m = p.add_argument_group("model")
    m.add_argument("--init", default="facenet128", help="facenet128 (default) or a checkpoint")
    m.add_argument(
        "--freeze-until",
        default="mixed_7a",
        metavar="LAYER",
        help="freeze every layer up to this one (mixed_7a; 'none' trains everything)",
    )
    m.add_argument("--bn", choices=["frozen", "train"], default="frozen", help="batch norms")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--p", type=int, default=32, help="identities per batch (32)")
    t.add_argument("--k", type=int, default=4, help="crops per identity (4)")
    t.add_argument("--margin", type=float, default=0.2, help="triplet margin alpha (0.2)")
    t.add_argument("--mining", choices=["semi-hard", "batch-hard"], default="semi-hard")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "adagrad"], default="adam")
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    e = p.add_argument_group("engine")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 on GPU")
    e.add_argument("--cache", choices=["auto", "on", "off"], default="auto", help="trunk cache")
    e.add_argument("--aug-versions", type=int, default=4, help="cached versions per crop (4)")
    e.add_argument("--cache-dir", type=Path, default=None, help="($FACEREC_HOME/training-cache)")
    e.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads")
    e.add_argument("--resume", action="store_true", help="continue RUN from its last.pt")
    e.add_argument("--time-budget", type=float, default=None, metavar="S", help="stop by then")
    common(p)
    p.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from training.finetune import TrainConfig
        from training.run import RunRequest, train
    except ImportError as exc:
        raise TrainingToolsMissingError(
            f"training needs the export extras ({exc.name} is missing): pip install -e '.[export]'"
        ) from None
    cfg = TrainConfig(
        **{
            f.name: getattr(args, f.name)
            for f in fields(TrainConfig)
            if hasattr(args, f.name) and f.name not in ("augment", "freeze_until")
        },
        freeze_until=None if args.freeze_until == "none" else args.freeze_until,
    )
    req = RunRequest(
        data=args.data,
        out=args.out,
        lfw_pairs=args.lfw_pairs,
        test_fold=args.test_fold,
        ten_fold=args.ten_fold,
        folds=args.folds,
        val_fraction=args.val_fraction,
        init=args.init,
        device=args.device,
        cache=args.cache,
        aug_versions=args.aug_versions,
        cache_dir=args.cache_dir,
        resume=args.resume,
        time_budget=args.time_budget,
        threads=args.threads,
    )
    metrics = train(req, cfg, progress=not args.json)
    emit(metrics, args.json, _describe(metrics, args.out))
    return 0


def _describe(m: dict[str, object], out: Path) -> str:
    if "summary" in m:
        s = m["summary"]
        assert isinstance(s, dict)
        ft, base = s.get("fine_tuned"), s.get("starting_model")
        if not ft or not base:
            return f"no fold finished; {out / 'metrics.json'}"
        return (
            f"LFW test folds {s['folds_done']}: fine-tuned {100 * ft['accuracy_mean']:.2f} ± "
            f"{100 * ft['accuracy_std']:.2f} %, published weights "
            f"{100 * base['accuracy_mean']:.2f} ± {100 * base['accuracy_std']:.2f} % "
            "(threshold from each validation fold)\n"
            f"results: {out / 'metrics.json'}, {out / 'folds.png'}"
        )
    v = m["validation"]
    assert isinstance(v, dict)
    lines = [
        f"best epoch {m['best_epoch']} of {m['steps']} steps: validation accuracy "
        f"{100 * v['accuracy_best_threshold']:.2f} %, AUC {v['auc']:.5f}"
    ]
    test = m.get("test")
    if isinstance(test, dict):
        base = m["baseline"]
        assert isinstance(base, dict)
        lines.append(
            f"test fold: {100 * test['accuracy']:.2f} % (starting model "
            f"{100 * base['test']['accuracy']:.2f} %), threshold {test['threshold']:.3f} "
            "from the validation fold"
        )
    lines.append(f"run: {out} (best.pt, metrics.json, curves.png)")
    return "\n".join(lines)
