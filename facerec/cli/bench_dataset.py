"""``facerec bench dataset DIR``: accuracy and speed on your own folder of faces."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from facerec.cli.images import add_processes_option
from facerec.cli.output import emit
from facerec.evaluation.dataset import HELDOUT_FRACTION
from facerec.evaluation.dataset_card import MIN_IDENTITIES, MIN_IMPOSTOR_PAIRS, update_card
from facerec.evaluation.dataset_markdown import render
from facerec.evaluation.dataset_report import run_dataset
from facerec.openset import DEFAULT_FPIR, FPIR_ENV
from facerec.pipeline import FacePipeline

Options = Callable[[argparse.ArgumentParser], None]


def add_parser(
    bench: argparse._SubParsersAction[argparse.ArgumentParser], common: Options, pipeline: Options
) -> None:
    """Register ``dataset`` under ``facerec bench``."""
    b = bench.add_parser(
        "dataset",
        help="1:1 and 1:N accuracy and latency on your own folder (one sub-folder per person)",
        description="Measures the system on DIR, one sub-folder of photos per person (the "
        "layout of `identify --gallery`): every photo is analysed and enrolled through the "
        "service's enrolment gates; then 1:1 (EER, TAR@FAR, accuracy at the model card's "
        "threshold, ROC and score histograms) and open-set 1:N (rank-1/5, DIR@FPIR, the FPIR "
        f"that `facerec identify`'s threshold gives on this data; {HELDOUT_FRACTION:.0%} of "
        "the people held out as strangers), and per-stage latency. Writes OUT/report.json, "
        "OUT/report.md, roc.png, scores.png and det.png.",
    )
    b.add_argument("data", type=Path, metavar="DIR", help="one sub-folder of photos per person")
    b.add_argument("--out", type=Path, required=True, metavar="OUT", help="results folder")
    b.add_argument(
        "--max-pairs",
        type=int,
        default=100_000,
        metavar="N",
        help="genuine pairs (all up to N) and impostor pairs (sampled past N) (100,000)",
    )
    b.add_argument(
        "--gallery-images",
        type=int,
        default=3,
        metavar="K",
        help="photos that enrol each person in the 1:N gallery; the rest search (3)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of pair sampling and split (0)")
    b.add_argument(
        "--latency-images",
        type=int,
        default=50,
        metavar="N",
        help="photos timed one at a time for the per-stage latency (50)",
    )
    b.add_argument(
        "--fpir",
        type=float,
        default=None,
        help="the FPIR whose calibrated threshold is checked on this data, as `identify "
        f"--fpir` (${FPIR_ENV}, else {DEFAULT_FPIR:g})",
    )
    b.add_argument(
        "--update-card",
        metavar="NAME",
        default=None,
        help="write the thresholds measured here into a copy of the model card named NAME "
        f"(`--model NAME` then uses them; needs {MIN_IDENTITIES}+ people and "
        f"{MIN_IMPOSTOR_PAIRS:,}+ impostor pairs)",
    )
    add_processes_option(b)
    common(b)
    pipeline(b)
    b.set_defaults(handler=cmd_dataset)


def cmd_dataset(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    report, faces, pairs = run_dataset(
        pipeline,
        args.data,
        args.out,
        max_pairs=args.max_pairs,
        k=args.gallery_images,
        seed=args.seed,
        latency_images=args.latency_images,
        fpir=args.fpir,
        progress=args.progress,
        processes=args.processes,
    )
    if args.update_card:
        path = update_card(
            pipeline, args.update_card, faces, pairs, args.gallery_images, args.seed, str(args.data)
        )
        report["card"] = {"name": args.update_card, "path": str(path)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (args.out / "report.md").write_text(render(report))
    d, v, i = report["dataset"], report["verification"], report["identification"]
    point = i["operating_point"]
    lines = [
        f"{d['identities']} people, {d['images']} files, {d['faces_used']} faces used "
        f"({sum(f['count'] for f in d['failures'].values())} not: see report.md)",
        f"1:1: EER {100 * v['eer']:.2f} %, best accuracy {100 * v['best_accuracy']:.2f} %, "
        f"accuracy at the card's threshold {100 * v['accuracy_at_threshold']:.2f} % "
        f"({v['genuine_pairs']:,} genuine, {v['impostor_pairs']:,} impostor pairs)",
    ]
    if i["rank1"] is not None:
        lines.append(
            f"1:N: rank-1 {100 * i['rank1']:.1f} %, rank-5 {100 * i['rank5']:.1f} % "
            f"(gallery of {i['split']['gallery_identities']})"
        )
    if point is not None:
        lines.append(
            f"identify's threshold {point['threshold']:.4f} (FPIR {point['configured_fpir']:g}): "
            f"measured FPIR {100 * point['measured_fpir']:.2f} % on "
            f"{i['split']['nonmated_probes']} strangers"
        )
    lines.append(f"{report['images_per_second']:.1f} images/s")
    if "card" in report:
        lines.append(f"calibrated card: {report['card']['path']} (use --model {args.update_card})")
    lines.append(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}")
    emit(report, args.json, "\n".join(lines))
    return 0
