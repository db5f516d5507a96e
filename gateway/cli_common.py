"""What the gateway's commands share: who they act as, and how they print."""

from __future__ import annotations

import argparse
import json
from typing import Any

from facerec.cli.output import emit
from gateway.service.types import Caller

CLI = Caller(key_id=None, role="cli", request_id=None)  # the audit log's name for them


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """``data`` as JSON with ``--json`` (anything JSON lacks as its string), else ``text``."""
    emit(json.loads(json.dumps(data, default=str)), args.json, text)


__all__ = ["CLI", "_print"]
