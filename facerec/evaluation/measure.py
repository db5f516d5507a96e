"""What every benchmark result records the same way, ``facerec bench`` and ``perf/``
alike: the machine it ran on (:func:`machine`) and latency percentiles (:func:`percentiles`)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line of a ``/proc`` file (None: not there)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _onnxruntime() -> str | None:
    """The installed onnxruntime's version, read without importing it (no threads, no
    memory taken from what the benchmark measures)."""
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git_commit() -> str | None:
    """The commit this tree is at (None: not a git checkout, e.g. a copy on a lent machine)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a result was measured on, the same keys in every benchmark's JSON;
    ``extra`` adds what only that benchmark knows (a GPU's name, a tool's version)."""
    memory_kb = _proc_field("/proc/meminfo", "MemTotal")
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(affinity) if affinity is not None else None,
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "memory_gib": round(int(memory_kb.split()[0]) / 1024**2, 1) if memory_kb else None,
        "onnxruntime": _onnxruntime(),
        "git_commit": _git_commit(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def percentiles(
    seconds: Sequence[float] | np.ndarray,
    keys: Iterable[str] = ("p50", "p95", "p99", "mean"),
    digits: int = 3,
) -> dict[str, float]:
    """Durations given in seconds, summed up in milliseconds rounded to ``digits``: the
    figures named by ``keys``, in their order, each one of ``pNN`` (a percentile: p50,
    p90, p95, p99...), ``mean``, ``max`` and ``count`` (how many durations). No
    durations: every figure 0."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        ms = np.zeros(1)
    out: dict[str, float] = {}
    for key in keys:
        if key == "count":
            out[key] = len(seconds)
            continue
        if key == "mean":
            value = ms.mean()
        elif key == "max":
            value = ms.max()
        elif key.startswith("p") and key[1:].isdigit():
            value = np.percentile(ms, int(key[1:]))
        else:
            raise ValueError(f"unknown statistic {key!r}")
        out[key] = round(float(value), digits)
    return out
