"""Check that the long README's text moved into the docs instead of being lost.

    .venv/bin/python scripts/check_docs_moved.py [--rev REV]

Every non-blank line of ``README.md`` at ``REV`` (the last commit with the long README by
default) must still appear in ``README.md`` or under ``docs/``, with the generated results
tables expanded as the site build expands them. Lines are compared after normalising what
moving may change: heading levels, links and images (their text and target), and line
breaks (a line may be rewrapped inside its paragraph). Lines changed or dropped on purpose
are listed in :data:`CHANGED` with the reason; anything else missing is printed, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
LONG_README = "240cd15"  # the last commit whose README.md held everything

LINK = re.compile(r"!?\[[^\]]*\]\([^)]*\)")
LINK_TAIL = re.compile(r"\]\([^)]*\)")  # a link that began on the line before

# Old lines (normalised, as printed) not found on purpose, and why.
CHANGED: dict[str, str] = {
    "Tenancy, idempotency and the admin key": (
        "heading: the section was split; docs/security.md 'Tenancy and the admin key', "
        "docs/rest-api.md 'Idempotency keys'"
    ),
    "| LFW 250x250 (120 images) | 12.1 img/s | **62.5 (5.16x)** | 61.0 (5.0x) | 30.6 (2.5x) "
    "| 64.0 (5.3x) | 31.1 (2.6x) |": (
        "generated from perf/results/speed.json: the same figures, one rounding rule "
        "(5.16x -> 5.2x)"
    ),
    "| 640x480, 3 faces (12 images) | 4.0 img/s | 13.2 (3.3x) | 14.9 (3.7x) | 7.5 (1.9x) "
    "| 18.4 (4.6x) | 8.6 (2.1x) |": (
        "generated from perf/results/speed.json: the same figures, one rounding rule "
        "(4.0 -> 4.01, 7.5 -> 7.52, 8.6 -> 8.61 images/s)"
    ),
    "| `facerec/` | the core package: decoding, MTCNN on ONNX Runtime, alignment, embedding, "
    "face selection and enrolment gates (`selection.py`, `quality.py`), the one loop that "
    "enrols a set of photos of a person, most typical first, and the gallery folder enrolled "
    "with it (`enrolment.py`; `identify`, `watch`, the benchmarks and the gateway use it), "
    "subject scoring and the open-set decision (`matching.py`, `openset.py`), LFW metrics and "
    "the open-set protocol (`evaluation/`), batch jobs in worker processes and the analysis of "
    "many files (`batch.py`), the micro-batcher the gateway and video share (`batching.py`), "
    "video (`video/`), CLI. Imports no torch, no web framework and nothing of the gateway (a "
    "test checks). |": (
        "the row as the Python API's work updated it (the public API, `api/`, added): "
        "README.md and docs/design/layout.md"
    ),
    "[link] has three scripts that run on the bundled faces):": (
        "docs/python-api.md: `examples/` is named, not linked (the site holds no page for it)"
    ),
    "through the decoder above (same limits, same error codes), arrays and PIL images are "
    "held to": (
        "docs/python-api.md: 'the decoder above' is on another page now: 'the decoder of "
        "the command line (same limits, same error codes)', linked"
    ),
}


def results_tables() -> ModuleType:
    path = ROOT / "docs" / "hooks" / "results_tables.py"
    spec = importlib.util.spec_from_file_location("results_tables", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalise(line: str) -> str:
    line = re.sub(r"^\s*#{1,6}\s+", "", line.strip())
    line = LINK_TAIL.sub("](link)", LINK.sub("[link]", line))
    return " ".join(line.split())


def corpus() -> str:
    expand = results_tables().expand
    texts = [(ROOT / "README.md").read_text()]
    texts += [expand(p.read_text()) for p in sorted((ROOT / "docs").rglob("*.md"))]
    lines = (normalise(line) for text in texts for line in text.splitlines())
    return " ".join(line for line in lines if line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=LONG_README, help="where the long README is")
    parser.add_argument("--file", type=Path, help="read the long README from this file instead")
    args = parser.parse_args()
    if args.file:
        old = args.file.read_text().splitlines()
    else:
        old = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.rev}:README.md"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    text = corpus()
    missing: list[tuple[int, str]] = []
    changed: list[tuple[int, str]] = []
    for number, line in enumerate(old, 1):
        norm = normalise(line)
        if not norm or norm in text:
            continue
        (changed if norm in CHANGED else missing).append((number, norm))
    for number, norm in changed:
        print(f"changed on purpose, line {number}: {norm}\n    ({CHANGED[norm]})")
    for number, norm in missing:
        print(f"MISSING, line {number}: {norm}")
    lines = sum(1 for line in old if line.strip())
    print(f"{lines} non-blank lines: {len(missing)} missing, {len(changed)} changed on purpose")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
