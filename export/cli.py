"""``facerec models``: the one-time conversion of the published weights.

Registered with the core CLI through the ``facerec.commands`` entry point. Conversion needs
PyTorch, which serving never does: this module imports none of it until the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from facerec.cli.output import emit
from facerec.errors import FaceRecError


class ExportToolsMissingError(FaceRecError):
    code = "export_tools_missing"
    http_status = 503


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("models", help="fetch, convert, export and check the model files")
    common(p)
    p.add_argument("--force", action="store_true", help="redo every step even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
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
