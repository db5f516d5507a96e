"""``facerec embed`` over many files, as users run it, against the PyTorch-eager reference.

    python -m perf.cli_files --lfw ../shared/datasets/lfw --out perf/results [--images 600]

Times the command itself (``facerec embed --json FILES``, a fresh process: interpreter
start, model loading and worker start-up included) with its default (worker processes, one
per core, from 32 files on) and with ``--processes 1`` (threads in one process), and the
reference of ``perf.speed`` (facenet-pytorch's way: eager MTCNN, box crop, eager
Inception-ResNet-v1, one image at a time; start-up excluded, which flatters it) over the
same files, unpadded as the command reads them. The start-up of the command is measured
apart (the same command on one file) so that both the whole wall time and the part spent
on the files are reported. Rounds are interleaved, as in ``perf.speed``, because these
machines' speed drifts; the cores other processes kept busy are recorded beside each run.
Writes ``cli_files.json`` and ``cli_files.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from facerec.runtime import default_threads
from perf.common import figure, record, write_json
from perf.scenes import lfw_files
from perf.speed import Reference, time_reference
from perf.triton_perf import watch_load

FACEREC = [sys.executable, "-m", "facerec.cli.main"]


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def watched(row: dict[str, Any]) -> Iterator[None]:
    """``watch_load`` (other processes alive before and after), plus the cores the whole
    machine kept busy, which also counts processes that came and went meanwhile."""
    busy, start = machine_busy(), time.perf_counter()
    with watch_load(row):
        yield
    row["machine_busy_cores"] = round((machine_busy() - busy) / (time.perf_counter() - start), 2)


def time_command(files: list[Path], *options: str) -> dict[str, Any]:
    """Wall seconds of ``facerec embed --json`` over ``files``, and the faces it found."""
    row: dict[str, Any] = {}
    with watched(row):
        start = time.perf_counter()
        done = subprocess.run(
            [*FACEREC, "embed", "--json", *options, *map(str, files)],
            capture_output=True,
            check=True,
            timeout=3600,
        )
        row["wall_s"] = time.perf_counter() - start
    doc = json.loads(done.stdout)
    row["faces"] = sum(len(i.get("faces", [])) for i in doc["images"])
    row["errors"] = sum("error" in i for i in doc["images"])
    return row


def summarise(rows: list[dict[str, Any]], images: int, startup: float) -> dict[str, Any]:
    wall = sum(r["wall_s"] for r in rows)
    files = wall - startup * len(rows)
    return {
        "runs": len(rows),
        "images": images * len(rows),
        "faces": sum(r["faces"] for r in rows),
        "wall_seconds": round(wall, 2),
        "images_per_second": round(images * len(rows) / wall, 2),
        "images_per_second_after_startup": round(images * len(rows) / files, 2),
        "other_processes_cores": [r["other_processes_cores"] for r in rows],
        "machine_busy_cores": [r["machine_busy_cores"] for r in rows],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    runs = result["runs"]
    labels = list(runs)
    whole = [runs[k]["images_per_second"] for k in labels]
    after = "images_per_second_after_startup"
    files = [runs[k].get(after, runs[k]["images_per_second"]) for k in labels]
    with figure(path, figsize=(8, 4.5), dpi=110) as (_, ax):
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], whole, 0.4, label="whole command (start-up included)")
        ax.bar([i + 0.2 for i in x], files, 0.4, label="after start-up")
        base = runs["reference (PyTorch eager)"]["images_per_second"]
        for i, rate in enumerate(whole):
            ax.text(i - 0.2, rate, f"x{rate / base:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("images per second")
        ax.set_title(f"facerec embed over {result['images']} LFW files, {result['cores']} cores")
        ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument("--images", type=int, default=600, help="LFW files per run (600)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved passes (2)")
    args = parser.parse_args()

    files = lfw_files(args.lfw, args.images)
    payloads = [f.read_bytes() for f in files]
    ref = Reference()
    commands = {
        "facerec embed (default: worker processes)": (),
        "facerec embed --processes 1": ("--processes", "1"),
    }
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    startups: list[float] = []
    reference_rows: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        startups.append(time_command(files[:1])["wall_s"])
        row: dict[str, Any] = {}
        with watched(row):
            timing = time_reference(ref, payloads, 0)
        reference_rows.append({**row, "wall_s": timing.wall, "faces": timing.faces})
        for name, options in commands.items():
            rows[name].append(time_command(files, *options))
    startup = min(startups)
    n = len(files)
    wall = sum(r["wall_s"] for r in reference_rows)
    reference = {
        "runs": len(reference_rows),
        "images": n * len(reference_rows),
        "faces": sum(r["faces"] for r in reference_rows),
        "wall_seconds": round(wall, 2),
        "images_per_second": round(n * len(reference_rows) / wall, 2),
        "other_processes_cores": [r["other_processes_cores"] for r in reference_rows],
        "machine_busy_cores": [r["machine_busy_cores"] for r in reference_rows],
        "note": "start-up (model loading, first call) excluded",
    }
    runs = {"reference (PyTorch eager)": reference}
    runs |= {name: summarise(r, n, startup) for name, r in rows.items()}
    base = reference["images_per_second"]
    for name, run in runs.items():
        run["speedup_vs_reference"] = round(run["images_per_second"] / base, 2)
        if "images_per_second_after_startup" in run:
            run["speedup_after_startup"] = round(run["images_per_second_after_startup"] / base, 2)
        print(f"{name:45s} {run['images_per_second']:7.1f} img/s  x{run['speedup_vs_reference']}")
    result = record(
        images=n,
        rounds=args.rounds,
        cores=default_threads(),
        startup_seconds=[round(s, 2) for s in startups],
        runs=runs,
        command="python -m perf.cli_files --lfw DIR --out perf/results",
    )
    write_json(args.out / "cli_files.json", result)
    plot(result, args.out / "cli_files.png")
    print(f"wrote {args.out / 'cli_files.json'} and {args.out / 'cli_files.png'}")


if __name__ == "__main__":
    main()
