"""Printing results: one JSON document for scripts, short lines for people."""

from __future__ import annotations

import json
import sys
from typing import Any

from facerec.errors import FaceRecError


def emit(doc: Any, as_json: bool, text: str) -> None:
    """Print ``doc`` as JSON, or ``text`` for a person."""
    if as_json:
        json.dump(doc, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(text)


def error_entry(exc: FaceRecError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def fail(exc: FaceRecError, as_json: bool, status: int = 1) -> int:
    """Report a failure that stopped the whole command; return its exit status."""
    if as_json:
        emit(error_entry(exc), True, "")
    else:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    return status
