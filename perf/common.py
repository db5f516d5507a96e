"""What every benchmark writes the same way: the run record stamped with the machine it
ran on, its JSON file, its plot, and latency percentiles.

Light on purpose (the standard library and numpy; matplotlib only inside :func:`figure`,
which is the core's :func:`facerec.evaluation.plots.figure`): ``perf.gpu_check`` imports it
on a lent GPU machine that has little else installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facerec.evaluation.measure import machine, percentiles
from facerec.evaluation.plots import figure

ROOT = Path(__file__).resolve().parents[1]


def load() -> float:
    """The machine's 1-minute load average: what shares the cores with a timing."""
    return round(os.getloadavg()[0], 2)


def record(**fields: Any) -> dict[str, Any]:
    """A benchmark's result: ``fields``, and ``machine`` (:func:`machine`) unless given."""
    fields.setdefault("machine", machine())
    return fields


def write_json(path: Path, doc: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """``doc`` as indented JSON with a final newline; the folders above are made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=default) + "\n")


__all__ = ["figure", "load", "machine", "percentiles", "record", "write_json"]
