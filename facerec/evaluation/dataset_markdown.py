"""``report.md``: the dataset benchmark's ``report.json`` as tables a person reads."""

from __future__ import annotations

from typing import Any

LISTED = 50  # files listed in a table; report.json lists them all


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _rates(entries: dict[str, Any], value: str) -> list[list[str]]:
    return [
        [rate, _pct(e[value]), f"{e['threshold']:.4f}" if "threshold" in e else e["reason"]]
        for rate, e in entries.items()
    ]


def render(report: dict[str, Any]) -> str:
    """The report as Markdown (same figures as the JSON)."""
    d, v, i = report["dataset"], report["verification"], report["identification"]
    s = report["settings"]
    out = [
        f"# Benchmark of `{d['dir']}`",
        "",
        f"Model `{s['model']}` ({s['precision']}, {s['alignment']} alignment"
        f"{', flip' if s['flip'] else ''}), backend {report['machine']['backend']}, "
        f"{report['machine']['usable_cores']} cores.",
        "",
        "## Dataset",
        "",
        *_table(
            ["identities", "images", "faces used", "unreadable", "no face", "refused by gates"],
            [
                [
                    str(d["identities"]),
                    str(d["images"]),
                    str(d["faces_used"]),
                    *(str(d["failures"][r]["count"]) for r in ("unreadable", "no_face", "refused")),
                ]
            ],
        ),
    ]
    failed = [
        [f"`{f['file']}`", reason, f"`{f['code']}`"]
        for reason, group in d["failures"].items()
        for f in group["files"]
    ]
    if failed:
        out += ["Files not measured:", "", *_table(["file", "reason", "code"], failed[:LISTED])]
        if len(failed) > LISTED:
            out += [f"... and {len(failed) - LISTED} more (`report.json`).", ""]
    out += [
        "## Verification (1:1)",
        "",
        *_table(
            ["genuine pairs", "impostor pairs", "EER", "AUC", "best accuracy (k-fold)"],
            [
                [
                    f"{v['genuine_pairs']:,}",
                    f"{v['impostor_pairs']:,}",
                    _pct(v["eer"]),
                    f"{v['auc']:.4f}",
                    f"{_pct(v['best_accuracy'])} ± {_pct(v['best_accuracy_std'])}",
                ]
            ],
        ),
        f"At the model card's threshold {v['threshold']:.4f}: accuracy "
        f"{_pct(v['accuracy_at_threshold'])} over {v['accuracy_pairs']:,} balanced pairs, "
        f"TAR {_pct(v['tar_at_threshold'])}, FAR {_pct(v['far_at_threshold'])}.",
        "",
        *_table(["FAR", "TAR", "threshold"], _rates(v["tar_at_far"], "tar")),
        "![ROC](roc.png) ![scores](scores.png)",
        "",
        "## Identification (1:N, open set)",
        "",
        i["split"]["rule"] + ".",
        "",
        *_table(
            ["gallery", "held out", "mated probes", "non-mated probes", "rank-1", "rank-5"],
            [
                [
                    str(i["split"]["gallery_identities"]),
                    f"{i['split']['heldout_identities']} ({_pct(i['split']['heldout_fraction'])})",
                    str(i["split"]["mated_probes"]),
                    str(i["split"]["nonmated_probes"]),
                    _pct(i["rank1"]),
                    _pct(i["rank5"]),
                ]
            ],
        ),
        *_table(["FPIR", "DIR", "threshold"], _rates(i["dir_at_fpir"], "dir")),
    ]
    point = i["operating_point"]
    if point is None:
        out += ["The model card has no identification thresholds for this variant.", ""]
    else:
        out += [
            f"`facerec identify` on this gallery: threshold {point['threshold']:.4f} for "
            f"FPIR {point['configured_fpir']:g}; measured here FPIR "
            f"{_pct(point['measured_fpir'])} ({point['false_alarms']} of "
            f"{i['split']['nonmated_probes']} strangers matched), DIR {_pct(point['dir'])}.",
            "",
        ]
        if point["matched_strangers"]:
            out += [
                "Strangers matched there (a person filed under two names shows here):",
                "",
                *_table(
                    ["probe", "matched", "similarity"],
                    [
                        [f"`{a['probe']}`", a["matched"], f"{a['similarity']:.4f}"]
                        for a in point["matched_strangers"]
                    ],
                ),
            ]
    out += ["![DET](det.png)", "", "## Speed", ""]
    stages = report["latency_ms"]["stages"]
    out += _table(
        ["stage", "p50 ms", "p95 ms"],
        [
            [k, *(f"{x[p]:.1f}" if x["count"] else "n/a" for p in ("p50", "p95"))]
            for k, x in stages.items()
        ],
    )
    out += [
        f"{report['images_per_second']:.1f} images/s over the whole dataset "
        f"({report['throughput']['processes']} process(es)).",
        "",
    ]
    return "\n".join(out)
