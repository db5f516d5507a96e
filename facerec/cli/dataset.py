"""``facerec prepare-dataset``: aligned crops of a face data set for training."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from facerec.cli.output import emit
from facerec.dataset.layout import LAYOUTS

Options = Callable[[argparse.ArgumentParser], None]


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Options,
    pipeline_options: Options,
) -> None:
    p = sub.add_parser(
        "prepare-dataset",
        help="detect and align every image of a data set into training crops",
        description="Detect and align every image of SRC with the serving pipeline (worker "
        "processes) and write the crops serving would embed to DST, one folder per "
        "identity, with DST/manifest.json listing every skipped image and why. SRC is "
        "either one folder per identity (VGGFace2 layout) or one flat folder of "
        "Person_Name_0001.jpg files (LFW; a folder with images/ and pairs.txt is read "
        "from images/). DST is written whole or not at all.",
        epilog="LFW, as the benchmark sees it: facerec prepare-dataset "
        "../shared/datasets/lfw/images OUT --pad 50",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="source images")
    p.add_argument("dst", type=Path, metavar="DST", help="output folder (new or empty)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="source layout (auto)")
    p.add_argument(
        "--pad", type=int, default=0, help="edge padding in px before detection (0; LFW: 50)"
    )
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="crop files (png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (95)")
    p.add_argument("--processes", type=int, default=None, help="worker processes (one per core)")
    common(p)
    pipeline_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from facerec.cli.pipeline_args import config_from_args
    from facerec.dataset.prepare import PrepareOptions, prepare_dataset

    manifest = prepare_dataset(
        args.src,
        args.dst,
        config_from_args(args),
        PrepareOptions(
            pad=args.pad,
            image_format=args.format,
            quality=args.quality,
            processes=args.processes,
            layout=args.layout,
        ),
        progress=not args.json,
    )
    by_code = ", ".join(f"{k} {v}" for k, v in manifest["skipped_by_code"].items()) or "none"
    text = (
        f"{manifest['kept']} crops of {manifest['identities']} identities in {args.dst} "
        f"({manifest['images']} images, skipped: {by_code}; several faces in "
        f"{manifest['several_faces']}, the primary one kept) in {manifest['seconds']:.0f} s\n"
        f"manifest: {args.dst / 'manifest.json'}"
    )
    emit(manifest, args.json, text)
    return 0
