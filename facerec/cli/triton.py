"""``facerec triton repo|serve``: the model repository and the server that runs it here."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from facerec.cli.output import emit
from facerec.models import BASE_MODEL
from facerec.triton.repository import write_repository
from facerec.triton.server import TritonServer


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``common`` adds the options every command has (``--json``, ``--verbose``)."""
    p = sub.add_parser("triton", help="NVIDIA Triton: model repository and server")
    p.set_defaults(run=run)
    triton = p.add_subparsers(dest="triton_command", required=True, metavar="ACTION")

    r = triton.add_parser(
        "repo",
        help="generate a model repository (configs from model_repository/TARGET)",
        description="Copy the committed config.pbtxt files of TARGET and fill each "
        "model's version folder with its model files (run `facerec models` first).",
    )
    r.add_argument("--target", choices=["cpu", "gpu"], default="cpu", help="cpu (default)")
    r.add_argument("--out", type=Path, required=True, metavar="DIR", help="repository folder")
    r.add_argument(
        "--model",
        default=BASE_MODEL,
        metavar="NAME",
        help=f"embedding model the embedder serves (default {BASE_MODEL})",
    )
    common(r)

    s = triton.add_parser(
        "serve",
        help="run tritonserver on loopback with the CPU repository until interrupted",
        description="Start the tritonserver installed by scripts/install_triton.sh, wait "
        "until every model is ready, and stop it cleanly on Ctrl-C or SIGTERM.",
    )
    s.add_argument(
        "--repository",
        type=Path,
        default=None,
        metavar="DIR",
        help="model repository (default: a fresh CPU repository in a temporary folder)",
    )
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port (8000)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus port (8002)")
    common(s)


def run(args: argparse.Namespace) -> int:
    if args.triton_command == "repo":
        names = write_repository(args.target, args.out, model=args.model)
        report = {
            "repository": str(args.out),
            "target": args.target,
            "model": args.model,
            "models": names,
        }
        emit(report, args.json, f"{args.target} repository in {args.out}: {', '.join(names)}")
        return 0
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="facerec-triton-") as tmp:
        repository = args.repository
        if repository is None:
            repository = Path(tmp) / "repository"
            write_repository("cpu", repository)
        server = TritonServer(
            repository, args.http_port, args.grpc_port, args.metrics_port, log=sys.stderr.buffer
        )
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop)
        server.start()
        report = {
            "grpc": server.grpc_url,
            "http": server.http_url,
            "metrics": f"{server.host}:{server.metrics_port}",
            "repository": str(repository),
        }
        emit(report, args.json, f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}")
        sys.stdout.flush()
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.25)
        died = not stop
        server.stop()
        return 1 if died else 0
