"""``facerec models``: the one-time conversion of the published weights.

Registered with the core CLI through the ``facerec.commands`` entry point. Conversion needs
PyTorch, which serving never does: this module imports none of it until the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from facerec.cli.output import emit
from facerec.errors import FaceRecError, InvalidArgumentError


class ExportToolsMissingError(FaceRecError):
    code = "export_tools_missing"
    http_status = 503


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "models",
        help="fetch, convert, export and check the model files",
        description="Without options: fetch the published weights, convert, export, check and "
        "quantise them (idempotent). With --from-checkpoint: export a fine-tuned checkpoint "
        "(`facerec train`) as model NAME, with the same artefacts and checks and thresholds "
        "calibrated on the LFW folds it did not train on.",
    )
    common(p)
    p.add_argument("--force", action="store_true", help="redo every step even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the models that can be selected")
    p.add_argument("--from-checkpoint", type=Path, default=None, metavar="CKPT")
    p.add_argument("--name", default=None, help="the exported model's name")
    p.add_argument(
        "--lfw",
        type=Path,
        default=None,
        metavar="DIR",
        help="LFW folder (images/, pairs.txt) for the calibration",
    )
    p.set_defaults(run=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if args.from_checkpoint is not None:
        return _from_checkpoint(args)
    try:
        from export.setup_models import setup_models
    except ImportError as exc:
        raise ExportToolsMissingError(
            f"converting the weights needs the export extras ({exc.name} is missing): "
            "pip install -e '.[export]'"
        ) from None
    report = setup_models(force=args.force, progress=not (args.quiet or args.json))
    lines = [f"{s['step']}: {s['status']}" for s in report["steps"]]
    lines.append(f"models in {report['models_dir']}")
    emit(report, args.json, "\n".join(lines))
    return 0


def _list(args: argparse.Namespace) -> int:
    from facerec.models import list_models, load_model_card

    models = []
    for name in list_models():
        card = load_model_card(name)
        models.append(
            {
                "name": name,
                "identity": card.identity,
                "description": card.raw.get("description", ""),
            }
        )
    emit(
        {"models": models},
        args.json,
        "\n".join(f"{m['identity']}  {m['description']}" for m in models),
    )
    return 0


def _from_checkpoint(args: argparse.Namespace) -> int:
    if not args.name or args.lfw is None:
        raise InvalidArgumentError(
            "--from-checkpoint needs --name NAME and --lfw DIR (the LFW folder whose unseen "
            "folds calibrate the thresholds)",
            code="usage",
        )
    try:
        from export.checkpoint_export import export_checkpoint
    except ImportError as exc:
        raise ExportToolsMissingError(
            f"exporting a checkpoint needs the export extras ({exc.name} is missing): "
            "pip install -e '.[export]'"
        ) from None
    card = export_checkpoint(
        args.from_checkpoint,
        args.name,
        args.lfw,
        force=args.force,
        progress=not (args.quiet or args.json),
    )
    best = next(c for c in card["calibrations"] if c["precision"] == "int8" and c["flip"])
    cosine = card["export"]["parity"]["embedding_cosine_min"]
    text = (
        f"model {card['name']} ({card['name']}:{card['weights_sha256'][:16]}): ONNX FP32/FP16/"
        f"INT8 and serving graphs, parity cosine {cosine:.7f}; "
        f"calibrated on LFW folds {card['calibration_data']['lfw_folds']}: INT8+flip threshold "
        f"{best['threshold']:.3f}, accuracy {100 * best['lfw_accuracy']:.2f} %\n"
        f"use it with --model {card['name']}"
    )
    emit(card, args.json, text)
    return 0
