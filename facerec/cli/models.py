"""``facerec models``: the one-time conversion of the published weights.

Conversion needs PyTorch, which serving never does, so it lives in the ``export`` package
and is imported only here.
"""

from __future__ import annotations

import argparse

from facerec.cli.output import emit
from facerec.errors import FaceRecError


class ExportToolsMissingError(FaceRecError):
    code = "export_tools_missing"
    http_status = 503


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
