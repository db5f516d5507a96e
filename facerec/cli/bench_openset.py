"""``facerec bench lfw-openset``: the LFW open-set identification benchmark."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from facerec.cli.bench import store_in_card
from facerec.cli.output import emit
from facerec.errors import InvalidArgumentError
from facerec.evaluation.fusion_weight import choose_weight
from facerec.evaluation.lfw_faces import load_or_embed
from facerec.evaluation.openset_report import card_thresholds, run_openset
from facerec.models import update_fusion
from facerec.pipeline import FacePipeline

Options = Callable[[argparse.ArgumentParser], None]


def add_parser(
    bench: argparse._SubParsersAction[argparse.ArgumentParser], common: Options, pipeline: Options
) -> None:
    """Register ``lfw-openset`` under ``facerec bench``."""
    b = bench.add_parser(
        "lfw-openset",
        help="LFW open-set identification (1:N): rank-1, DIR at FPIR, DET plot",
        description="Embeds every LFW image once (cached in OUT/embeddings.npz), then runs an "
        "open-set protocol: galleries of 100, 1,000 and all identities of one half, 1 or up "
        "to 3 enrolment images, thresholds calibrated on the other half. Writes "
        "OUT/openset.json and OUT/det.png.",
    )
    b.add_argument("--data", type=Path, required=True, metavar="DIR", help="LFW folder")
    b.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder")
    b.add_argument("--pad", type=int, default=50, help="edge padding before detection (50 px)")
    b.add_argument("--seed", type=int, default=0, help="seed of the identity split (0)")
    b.add_argument("--k", type=int, default=2, help="k of the top-k mean scoring (2)")
    b.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="keep the people LFW files under two names as two identities each",
    )
    b.add_argument(
        "--update-card",
        action="store_true",
        help="store the identification thresholds and the 1:1 FAR thresholds in the model "
        "card (with --choose-weight, the fusion weight and normalisation first)",
    )
    b.add_argument(
        "--choose-weight",
        action="store_true",
        help="fused model (A+B) only: choose the fusion weight on one calibration half and "
        "report it on the other (OUT/fusion.json; facerec.evaluation.fusion_weight), then "
        "run the benchmark with it",
    )
    common(b)
    pipeline(b)
    b.set_defaults(handler=cmd_lfw_openset)


def cmd_lfw_openset(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    lines: list[str] = []
    if args.choose_weight:
        pipeline, lines = _choose_weight(args, pipeline)
    doc = run_openset(
        pipeline,
        args.data,
        args.out,
        pad=args.pad,
        seed=args.seed,
        k=args.k,
        merge=args.merge,
        progress=not args.json,
    )
    (args.out / "openset.json").write_text(json.dumps(doc, indent=2))
    if args.update_card:
        store_in_card(pipeline, **card_thresholds(doc))
    lines.append(f"LFW open-set, {doc['default_method']} scoring, up to 3 enrolment images:")
    for g in doc["galleries"]:
        dirs = ", ".join(f"DIR@{f} {100 * v:.1f} %" for f, v in g["dir_at_fpir"].items())
        cal = ", ".join(
            f"FPIR {100 * c['measured_fpir']:.3g} % at {f}" for f, c in g["calibrated"].items()
        )
        lines.append(f"  G={g['G']}: rank-1 {100 * g['rank1']:.1f} %, {dirs}; calibrated: {cal}")
    lines.append(f"results: {args.out / 'openset.json'}, DET: {args.out / 'det.png'}")
    emit(doc, args.json, "\n".join(lines))
    return 0


def _choose_weight(
    args: argparse.Namespace, pipeline: FacePipeline
) -> tuple[FacePipeline, list[str]]:
    """``--choose-weight``: the weight search on the benchmark's embedding cache; with
    ``--update-card`` the card's fusion section is rewritten and the pipeline reopened
    with it (the cache is reweighted, not embedded again)."""
    if not pipeline.card.fused:
        raise InvalidArgumentError(
            f"--choose-weight needs a fused model (A+B), not {pipeline.card.name!r}",
            code="not_fused",
        )
    faces = load_or_embed(pipeline, args.data, args.out / "embeddings.npz", args.pad, not args.json)
    found = choose_weight(faces, pipeline.card, seed=args.seed, k=args.k, merge=args.merge)
    (args.out / "fusion.json").write_text(json.dumps(found, indent=2))
    lines = [f"fusion weight (z-scores of {' and '.join(found['parts'])}):"]
    for d in found["directions"]:
        g = d["report"]["1000"]["calibrated"]
        figures = ", ".join(
            f"DIR@{f} {100 * v['dir']:.1f} % (FPIR {100 * v['measured_fpir']:.3g} %)"
            for f, v in g.items()
        )
        lines.append(
            f"  chosen on half {d['calibration_half']}: w = {d['weight']:g} (a, b = "
            f"{d['part_weights'][0]:.3f}, {d['part_weights'][1]:.3f}); on half "
            f"{d['evaluation_half']}, G=1000: {figures}"
        )
    if args.update_card:
        card = found["card"]
        update_fusion(
            pipeline.card.name,
            weight=card["weight"],
            score_normalisation={**card["score_normalisation"], "source": card["source"]},
            weight_source=f"{found['criterion']}; {card['source']} (fusion.json)",
        )
        pipeline = FacePipeline.open(pipeline.config)
    lines.append(f"weight search: {args.out / 'fusion.json'}")
    return pipeline, lines
