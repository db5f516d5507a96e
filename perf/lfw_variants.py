"""LFW accuracy of every pipeline variant, side by side.

    python -m perf.lfw_variants --data ../shared/datasets/lfw --out perf/results

runs ``facerec bench lfw`` once per variant (alignment x flip x precision; several minutes
each; ``--only NAME`` picks some), keeps each run's ``lfw.json`` under
``OUT/lfw/VARIANT/``, and writes
``OUT/lfw_variants.json`` and a Markdown table ``OUT/lfw_variants.md``. ``--summarize``
only rebuilds the table from runs already there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from perf.common import write_json

VARIANTS = {
    "similarity+flip, int8 (default)": [],
    "similarity+flip, fp32": ["--precision", "fp32"],
    "similarity+flip, fp16": ["--precision", "fp16"],
    "similarity, int8": ["--no-flip"],
    "similarity, fp32": ["--no-flip", "--precision", "fp32"],
    "box+flip, int8": ["--alignment", "box"],
    "box, int8": ["--alignment", "box", "--no-flip"],
}


def slug(name: str) -> str:
    return name.split(" (")[0].replace("+", "_").replace(", ", "_").replace(" ", "_")


def run(data: Path, out: Path, name: str, extra: list[str]) -> None:
    target = out / "lfw" / slug(name)
    cmd = [
        sys.executable,
        "-m",
        "facerec.cli.main",
        "bench",
        "lfw",
        "--data",
        str(data),
        "--out",
        str(target),
        "--update-card",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def summarize(out: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in VARIANTS:
        path = out / "lfw" / slug(name) / "lfw.json"
        if path.is_file():
            d = json.loads(path.read_text())
            rows[name] = {
                "accuracy_mean": d["accuracy_mean"],
                "accuracy_std": d["accuracy_std"],
                "tar_at_far_1e-3": d["tar_at_far_1e-3"],
                "auc": d["auc"],
                "threshold": d["threshold"],
                "threshold_far_1e-3": d["threshold_far_1e-3"],
                "images_per_second": d["timing"]["images_per_second"],
                "no_face_found": d["no_face_found"],
            }
    lines = [
        "| variant | accuracy (mean ± std) | TAR @ FAR=1e-3 | AUC | threshold |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} % | "
            f"{100 * r['tar_at_far_1e-3']:.2f} % | {r['auc']:.5f} | {r['threshold']:.3f} |"
        )
    write_json(out / "lfw_variants.json", rows)
    (out / "lfw_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument("--summarize", action="store_true", help="only rebuild the table")
    parser.add_argument(
        "--only", action="append", default=[], help="run only variants named so (repeatable)"
    )
    args = parser.parse_args()
    if not args.summarize:
        for name, extra in VARIANTS.items():
            if not args.only or name in args.only:
                run(args.data, args.out, name, extra)
    summarize(args.out)


if __name__ == "__main__":
    main()
