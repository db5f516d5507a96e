"""A process's CPU per thread, grouped by what the thread does (``/proc/PID/task``), for
the benchmarks: where a gateway replica's CPU per request goes, without a sampler's
guesses. Python's thread names come from ``py-spy dump`` (a dev dependency); threads that
Python does not know (ONNX Runtime's, gRPC's) are ``native``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# thread name prefix -> role (the first that matches)
ROLES = (
    ("ThreadPoolExecutor-0", "pipeline"),  # the pipeline's workers: detect, align, embed
    ("AnyIO worker thread", "request threads"),  # routes' blocking work: SQL, index, audit
    ("MainThread", "event loop"),  # HTTP, multipart, dependencies
    ("micro-batcher", "micro-batcher"),
)

_THREAD = re.compile(r'^Thread (0x[0-9A-Fa-f]+|\d+) \(\w+\): "([^"]*)"', re.M)


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """Thread id -> (user, system) CPU seconds so far, of each live thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python's name for it (empty without py-spy or its permission)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True)
    return {int(t, 0): name for t, name in _THREAD.findall(dump.stdout)}


def role(name: str | None) -> str:
    for prefix, what in ROLES:
        if name is not None and name.startswith(prefix):
            return what
    return "native" if name is None else "other"


def per_request(
    before: dict[int, tuple[float, float]],
    after: dict[int, tuple[float, float]],
    names: dict[int, str],
    requests: int,
) -> dict[str, dict[str, float]]:
    """CPU ms per request of each role between two :func:`thread_cpu` snapshots, in all and
    in the kernel (``system``: syscalls, futexes, sockets). Only threads alive at the
    second snapshot count: take both within one steady load (pool threads stay)."""
    total: dict[str, float] = defaultdict(float)
    system: dict[str, float] = defaultdict(float)
    for tid, (user, sys_) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        what = role(names.get(tid))
        total[what] += (user - u0) + (sys_ - s0)
        system[what] += sys_ - s0
    scale = 1e3 / max(requests, 1)
    order = sorted(total, key=lambda r: -total[r])
    return {
        r: {"cpu_ms": round(total[r] * scale, 2), "system_ms": round(system[r] * scale, 2)}
        for r in order
        if total[r] > 0
    }
