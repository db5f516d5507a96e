"""``facerec``: face detection, embedding, verification and identification from the shell.

Every command takes ``--json`` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from facerec import __version__
from facerec.cli import bench, images, triton
from facerec.cli.output import fail
from facerec.detection.mtcnn import MTCNNConfig
from facerec.errors import FaceRecError
from facerec.models import PRECISIONS
from facerec.pipeline import FacePipeline, PipelineConfig

Handler = Callable[[argparse.Namespace, FacePipeline], int]


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

    p = sub.add_parser("models", help="fetch, convert, export and check the model files")
    _common(p)
    p.add_argument("--force", action="store_true", help="redo every step even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("detect", help="find faces: boxes, scores, 5 landmarks")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _common(p)
    _pipeline_options(p)
    p.set_defaults(handler=images.cmd_detect, embed=False)

    p = sub.add_parser("embed", help="128-d embeddings of the faces in each image")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument(
        "--single", action="store_true", help="one face per image: the largest, most central"
    )
    _common(p)
    _pipeline_options(p)
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
    p.add_argument("--threshold", type=float, default=None, help="cosine threshold (calibrated)")
    _common(p)
    _pipeline_options(p)
    p.set_defaults(handler=images.cmd_identify)

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
    triton.add_commands(sub, _common)
    _gateway_commands(sub)
    return parser


def _gateway_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands of the REST gateway (the ``gateway`` extra), imported only when run."""
    settings_help = "settings come from FACEREC_* variables or .env (see .env.example)"
    p = sub.add_parser(
        "serve",
        help="run the REST gateway (embedded SQLite + Milvus Lite by default)",
        epilog=settings_help,
    )
    p.add_argument("--host", default=None, help="bind address (FACEREC_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (FACEREC_PORT, 8000)")
    _common(p)

    p = sub.add_parser("keys", help="API keys and master-key rotation", epilog=settings_help)
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="print a new API key (shown once)")
    k.add_argument("--role", required=True, choices=["admin", "enrol", "verify", "identify"])
    k.add_argument("--label", default="", help="a note on who holds the key")
    _common(k)
    k = keys.add_parser("list", help="API keys (ids and roles, never secrets)")
    _common(k)
    k = keys.add_parser("revoke", help="revoke an API key by id")
    k.add_argument("key_id")
    _common(k)
    k = keys.add_parser(
        "rotate",
        help="re-wrap data keys under FACEREC_MASTER_KEY (old keys in "
        "FACEREC_PREVIOUS_MASTER_KEYS) and re-protect the index; reads go on meanwhile",
    )
    k.add_argument("--keep-index", action="store_true", help="re-wrap keys only")
    _common(k)

    p = sub.add_parser(
        "reindex",
        help="rebuild the vector index from the encrypted system of record",
        epilog=settings_help,
    )
    p.add_argument("--check", action="store_true", help="only repair differences (as at start-up)")
    _common(p)

    p = sub.add_parser("audit", help="the tamper-evident audit log", epilog=settings_help)
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a = audit.add_parser("verify", help="check the hash chain: exit 1 if any event was altered")
    _common(a)


GATEWAY_COMMANDS = ("serve", "keys", "reindex", "audit")


def pipeline_from_args(args: argparse.Namespace) -> FacePipeline:
    config = PipelineConfig(
        detector=MTCNNConfig(
            min_face_size=args.min_face_size, thresholds=tuple(args.detection_thresholds)
        ),
        alignment=args.alignment,
        flip=args.flip,
        precision=args.precision,
        threads=args.threads,
        max_detect_side=args.max_detect_side,
    )
    return FacePipeline.open(config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.progress = sys.stderr.isatty() and not args.json
    try:
        if args.command == "models":
            from facerec.cli.models import cmd_models

            return cmd_models(args)
        if args.command == "triton":
            return triton.run(args)
        if args.command in GATEWAY_COMMANDS:
            from importlib import import_module

            return int(import_module("gateway.cli").run(args))
        handler: Handler = args.handler
        return handler(args, pipeline_from_args(args))
    except FaceRecError as exc:
        return fail(exc, args.json)


if __name__ == "__main__":
    sys.exit(main())
