"""A process's memory as Linux reports it (``/proc/PID/status``), for the benchmarks."""

from __future__ import annotations

from pathlib import Path


def status(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of ``/proc/PID/status``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """``VmHWM`` := ``VmRSS``: the peak from now on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
