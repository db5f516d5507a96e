"""Two versions of the gateway side by side: replica CPU per identify request, A/B.

    git worktree add /tmp/base <commit>
    python -m perf.replica_ab --base /tmp/base --out perf/results/replica_ab

starts PostgreSQL and a Milvus 2.3 standalone server on loopback (as ``perf/scale.py``),
one API replica of this checkout (A) and one of the checkout at ``--base`` (B, the same
virtual environment, its code first on ``PYTHONPATH``), enrols the gallery through A,
then puts identify load on each in turn behind its own HAProxy, alternating which goes
first, ``--rounds`` times: the replica's CPU per request, in all and by thread role
(:mod:`perf.threads`). On a shared machine the figures drift between minutes by as much
as a cut moves them; alternating the two under the same conditions is what separates the
cut from the drift. Writes ``replica_ab.json`` (every run, and each side's medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from perf.common import record, write_json
from perf.scale import Deployment, cpu_of, enrol_gallery, load_on, new_deployment
from perf.threads import per_request, thread_cpu, thread_names

HERE = Path(__file__).resolve().parents[1]


def _run(d: Deployment, name: str, probes: list[Any], duration: float) -> dict[str, float]:
    with d.balancer([name]) as lb, ProcessPoolExecutor(1) as pool:
        pid = d.apis[name].proc.pid
        load_on(pool, lb.url, d, probes, 8, 3)
        names = thread_names(pid)
        threads, cpu = thread_cpu(pid), cpu_of({"r": {pid}})
        result = load_on(pool, lb.url, d, probes, 8, duration)
        after = cpu_of({"r": {pid}})
        served = max(result["responses"], 1)
        roles = per_request(threads, thread_cpu(pid), names, served)
    return {
        "replica_ms": round((after["r"] - cpu["r"]) / served * 1e3, 2),
        "requests_per_second": result["requests_per_second"],
        "errors": result["errors"],
        **{role: v["cpu_ms"] for role, v in roles.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (B)")
    parser.add_argument("--out", type=Path, default=Path("perf/results/replica_ab"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with ExitStack() as stack:
        d = new_deployment(stack, "facerec-ab-")
        env = dict(d.env)
        for name, code in (("api0", HERE), ("api1", args.base.resolve())):
            d.env = {**env, "PYTHONPATH": str(code)}
            d.start_api(name)
        d.env = env
        with d.balancer(["api0"]) as lb:
            probes = enrol_gallery(d, lb.url)
        for r in range(args.rounds):
            sides = [("A", "api0"), ("B", "api1")]
            for side, name in sides if r % 2 == 0 else sides[::-1]:
                row = _run(d, name, probes, args.duration)
                print(side, json.dumps(row), flush=True)
                runs[side].append(row)
    medians = {
        side: {k: round(statistics.median(r.get(k, 0.0) for r in rows), 2) for k in rows[0]}
        for side, rows in runs.items()
    }
    write_json(
        args.out / "replica_ab.json",
        record(a=str(HERE), b=str(args.base), runs=runs, medians=medians),
    )
    for side, row in medians.items():
        print(side, "median", json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
