"""``facerec``: face detection, embedding, verification and identification from the shell.

Every command takes ``--json`` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from facerec import __version__
from facerec.cli import (
    bench,
    bench_dataset,
    bench_openset,
    dataset,
    identify,
    images,
    triton,
    watch,
)
from facerec.cli.output import fail
from facerec.cli.pipeline_args import pipeline_from_args
from facerec.errors import FaceRecError
from facerec.models import BASE_MODEL, PRECISIONS
from facerec.pipeline import FacePipeline

Handler = Callable[[argparse.Namespace, FacePipeline], int]
Common = Callable[[argparse.ArgumentParser], None]
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]", Common], None]
COMMAND_GROUP = "facerec.commands"
log = logging.getLogger(__name__)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--alignment",
        choices=["similarity", "box"],
        default="similarity",
        help="5-point similarity warp (default) or box crop with margin",
    )
    g.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="int8",
        help="embedder precision (default int8: same LFW accuracy, several times faster)",
    )
    g.add_argument(
        "--no-flip", dest="flip", action="store_false", help="skip flip test-time augmentation"
    )
    g.add_argument("--min-face-size", type=int, default=20, help="smallest face in px (20)")
    g.add_argument(
        "--detection-thresholds",
        type=float,
        nargs=3,
        default=(0.6, 0.7, 0.7),
        metavar=("P", "R", "O"),
        help="P-Net, R-Net, O-Net face score thresholds (0.6 0.7 0.7)",
    )
    g.add_argument(
        "--max-detect-side",
        type=int,
        default=2048,
        help="search larger images downscaled to this longest side (2048 px)",
    )
    g.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (all cores)")
    g.add_argument(
        "--model",
        default=BASE_MODEL,
        metavar="NAME",
        help=f"embedding model by name (default {BASE_MODEL}; `facerec models --list`)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerec",
        description="Face recognition with MTCNN + FaceNet (128-d) on ONNX Runtime.",
        epilog="Run `facerec models` once to fetch and convert the published weights.",
    )
    parser.add_argument("--version", action="version", version=f"facerec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="find faces: boxes, scores, 5 landmarks")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _common(p)
    _pipeline_options(p)
    images.add_processes_option(p)
    p.set_defaults(handler=images.cmd_detect, embed=False)

    p = sub.add_parser("embed", help="128-d embeddings of the faces in each image")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument(
        "--single", action="store_true", help="one face per image: the largest, most central"
    )
    _common(p)
    _pipeline_options(p)
    images.add_processes_option(p)
    p.set_defaults(handler=images.cmd_embed)

    p = sub.add_parser("verify", help="are two images the same person? (1:1)")
    p.add_argument("image_a", type=Path, metavar="IMAGE_A")
    p.add_argument("image_b", type=Path, metavar="IMAGE_B")
    p.add_argument("--threshold", type=float, default=None, help="cosine threshold (calibrated)")
    _common(p)
    _pipeline_options(p)
    p.set_defaults(handler=images.cmd_verify)

    p = sub.add_parser("identify", help="who is in each probe image? (1:N, open set)")
    p.add_argument("probes", nargs="+", type=Path, metavar="PROBE")
    p.add_argument(
        "--gallery", type=Path, required=True, metavar="DIR", help="one sub-folder per person"
    )
    p.add_argument("--top-k", type=int, default=5, help="candidates per face (5)")
    identify.add_options(p)
    _common(p)
    _pipeline_options(p)
    images.add_processes_option(p)
    p.set_defaults(handler=identify.cmd_identify)

    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = bench_sub.add_parser("lfw", help="LFW verification accuracy, 10-fold, end to end")
    b.add_argument("--data", type=Path, required=True, metavar="DIR", help="LFW folder")
    b.add_argument("--pairs", type=Path, default=None, help="pairs file (DIR/pairs.txt)")
    b.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder")
    b.add_argument("--pad", type=int, default=50, help="edge padding before detection (50 px)")
    b.add_argument(
        "--update-card",
        action="store_true",
        help="store the calibrated thresholds in the model card",
    )
    _common(b)
    _pipeline_options(b)
    b.set_defaults(handler=bench.cmd_lfw)
    bench_openset.add_parser(bench_sub, _common, _pipeline_options)
    bench_dataset.add_parser(bench_sub, _common, _pipeline_options)
    triton.add_commands(sub, _common)
    dataset.add_commands(sub, _common, _pipeline_options)
    watch.add_command(sub, _common, _pipeline_options)
    _plugin_commands(sub)
    return parser


def _plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands other packages register under the ``facerec.commands`` entry point group
    (``models`` from ``export``, ``serve``/``keys``/``reindex``/``audit`` from ``gateway``).

    The core imports none of them: each entry point names a light registration function
    that adds its sub-parsers and sets ``run`` on them; the heavy modules load when the
    command runs. A package that cannot be imported (an extra not installed) adds nothing.
    """
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register: Register = ep.load()
        except ImportError as exc:
            log.debug("commands %s not available: %s", ep.name, exc)
            continue
        register(sub, _common)


def main(argv: Sequence[str] | None = None) -> int:
    # A closed pipe (`facerec ... --json | head`) ends the process quietly, as it does
    # for other Unix tools, instead of a BrokenPipeError traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.progress = sys.stderr.isatty() and not args.json
    try:
        if hasattr(args, "run"):
            run: Callable[[argparse.Namespace], int] = args.run
            return run(args)
        handler: Handler = args.handler
        return handler(args, pipeline_from_args(args))
    except FaceRecError as exc:
        return fail(exc, args.json)


if __name__ == "__main__":
    sys.exit(main())
