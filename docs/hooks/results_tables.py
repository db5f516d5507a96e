"""MkDocs hook: the results tables, generated from ``perf/results/*.json`` at build time.

A page asks for a table with a marker on a line of its own::

    <!-- results: lfw -->

and the build replaces the marker with the table made from the JSON file that
:data:`TABLES` names for it, so a page cannot disagree with the measurement it cites. An
unknown name, a missing file or a missing field fails the build. Each function below reads
one file and returns a Markdown table; ``python docs/hooks/results_tables.py NAME`` prints
one.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

RESULTS = Path(__file__).resolve().parents[2] / "perf" / "results"
MARKER = re.compile(r"^<!-- results: ([a-z_]+) -->$", re.MULTILINE)

Json = dict[str, Any]


def load(name: str, results: Path = RESULTS) -> Json:
    path = results / name
    try:
        data: Json = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PluginError(f"results table: cannot read {path}: {exc}") from exc
    return data


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def whole(x: float) -> str:
    """Rounded half up to a whole number, with thousands separators (810.5 -> 811)."""
    return f"{math.floor(x + 0.5):,}"


def rate(x: float) -> str:
    """Images per second: three significant digits (62.5, 13.2, 2.44, 0.82)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def lfw(results: Path = RESULTS) -> str:
    """``lfw_variants.json``: accuracy, TAR at FAR 1e-3, AUC, threshold per variant."""
    rows = [
        [
            name,
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} %",
            pct(r["tar_at_far_1e-3"], 2),
            f"{r['auc']:.5f}",
            f"{r['threshold']:.3f}",
        ]
        for name, r in load("lfw_variants.json", results).items()
    ]
    header = ["variant", "accuracy (mean ± std)", "TAR @ FAR=1e-3", "AUC", "threshold"]
    return table(header, rows)


SPEED_SETS = {
    "lfw_250x250": "LFW 250x250",
    "scene_640x480_3_faces": "640x480, 3 faces",
    "scene_1920x1080_6_faces": "1920x1080, 6 faces",
}
SPEED_COLUMNS = {
    "reference (PyTorch eager)": "reference",
    "default, worker processes": "default, worker processes",
    "default, threads, batch 16": "default, threads, batch 16",
    "default, threads, batch 1": "default, batch 1",
    "similarity, no flip, int8, batch 16": "no flip, INT8",
    "similarity+flip, fp32, batch 16": "flip, FP32",
}
SPEED_DEFAULT = "default, worker processes"


def speed(results: Path = RESULTS) -> str:
    """``speed.json``: end-to-end images/s per input set and configuration, and the speed-up
    over the reference (the default in bold)."""
    data = load("speed.json", results)
    rounds = int(data["rounds"])
    sets: dict[str, Json] = data["end_to_end"]
    columns = list(next(iter(sets.values())))
    rows = []
    for key, runs in sets.items():
        images = next(iter(runs.values()))["images"] // rounds
        row = [f"{SPEED_SETS.get(key, key)} ({images} images)"]
        for column in columns:
            r = runs[column]
            if r["speedup_vs_reference"] == 1.0:
                row.append(f"{rate(r['images_per_second'])} img/s")
                continue
            cell = f"{rate(r['images_per_second'])} ({r['speedup_vs_reference']:.1f}x)"
            row.append(f"**{cell}**" if column == SPEED_DEFAULT and key == "lfw_250x250" else cell)
        rows.append(row)
    return table(["input", *(SPEED_COLUMNS.get(c, c) for c in columns)], rows)


CLI_ROWS = {
    "facerec embed (default: worker processes)": (
        "`facerec embed` (default: {workers} worker processes)"
    ),
    "facerec embed --processes 1": "`facerec embed --processes 1` (threads in one process)",
}
CLI_DEFAULT = "facerec embed (default: worker processes)"


def cli_files(results: Path = RESULTS) -> str:
    """``cli_files.json``: ``facerec embed`` as users run it against the eager reference
    (the default in bold)."""
    data = load("cli_files.json", results)
    rows = []
    for name, r in data["runs"].items():
        if r["speedup_vs_reference"] == 1.0:
            rows.append([name, f"{r['images_per_second']:.1f}", "", "1x"])
            continue
        label = CLI_ROWS.get(name, name).format(workers=data["cores"])
        speed, speedup = f"{r['images_per_second']:.1f}", f"{r['speedup_vs_reference']:.1f}x"
        if name == CLI_DEFAULT:
            speed, speedup = f"**{speed}**", f"**{speedup}**"
        after = f"{r['speedup_after_startup']:.1f}x"
        after = f"({after} after start-up)" if name == CLI_DEFAULT else f"({after})"
        rows.append(
            [label, speed, f"{r['images_per_second_after_startup']:.1f}", f"{speedup} {after}"]
        )
    low, high = min(data["startup_seconds"]), max(data["startup_seconds"])
    header = [
        "run",
        "images/s, whole command",
        f"after start-up ({low:.1f}-{high:.1f} s)",
        "vs reference",
    ]
    return table(header, rows)


def _fpir(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def openset_thresholds(results: Path = RESULTS) -> str:
    """``openset.json`` (``card.identification.centroid``): the centroid thresholds at FPIR
    1e-2 and 1e-3 for galleries of 10, 100, 1,000 and 4,000 people."""
    card = load("openset.json", results)["card"]["identification"]["centroid"]
    sizes = [10, 100, 1000, 4000]
    rows = []
    for fpir in (1e-2, 1e-3):
        j = card["fpirs"].index(fpir)
        row = [f"FPIR {_fpir(fpir)}"]
        for size in sizes:
            row.append(f"{card['thresholds'][card['gallery_sizes'].index(size)][j]:.3f}")
        rows.append(row)
    header = ["centroid threshold", *(f"{s:,}" for s in sizes)]
    header[1] += " people"
    return table(header, rows)


def openset_galleries(results: Path = RESULTS) -> str:
    """``openset.json`` (``galleries``): rank-1, DIR at FPIR, and the calibrated operating
    points (measured FPIR pooled and per half, DIR) per gallery size."""
    data = load("openset.json", results)
    rows = []
    for g in data["galleries"]:
        size = max(g["gallery_size"])
        label = f"{size:,} (all)" if g["G"] == "all" else f"{size:,}"
        cal = g["calibrated"]

        def measured(fpir: str, digits: int, cal: Json = cal) -> str:
            c = cal[fpir]
            per = ", ".join(f"{100 * x:.{digits}f}" for x in c["measured_fpir_per_fold"])
            return f"{100 * c['measured_fpir']:.{digits}f} % ({per})"

        rows.append(
            [
                label,
                pct(g["rank1"]),
                pct(g["dir_at_fpir"]["0.1"]),
                pct(g["dir_at_fpir"]["0.01"]),
                pct(g["dir_at_fpir"]["0.001"]),
                measured("0.01", 2),
                measured("0.001", 3),
                f"{pct(cal['0.01']['dir'])} / {pct(cal['0.001']['dir'])}",
            ]
        )
    header = [
        "G",
        "rank-1",
        "DIR @ FPIR 1e-1",
        "@ 1e-2",
        "@ 1e-3",
        "calibrated: FPIR measured at 1e-2 (per half)",
        "at 1e-3 (per half)",
        "DIR at 1e-2 / 1e-3",
    ]
    return table(header, rows)


OPENSET_ROWS = [
    ("1 photo (any scoring)", "centroid", "1"),
    ("up to 3, `max`", "max", "3"),
    ("up to 3, `topk` (k = 2)", "topk", "3"),
    ("up to 3, `centroid`", "centroid", "3"),
    ("up to 3, `centroid`, enrolment photos through the gates", "centroid+gates", "3"),
]


def openset_enrolment(results: Path = RESULTS) -> str:
    """``openset.json`` (``results``): at G = 1,000, rank-1 and DIR at FPIR 1e-2 / 1e-3 by
    enrolment and scoring (the default, centroid with up to 3 photos, in bold)."""
    data = load("openset.json", results)
    rows = []
    for label, method, enrolment in OPENSET_ROWS:
        r = data["results"][method][enrolment]["1000"]
        cells = [pct(r["dir_at_fpir"]["0.01"]), pct(r["dir_at_fpir"]["0.001"])]
        if method == data["default_method"] and enrolment == "3":
            cells = [f"**{c}**" for c in cells]
        rows.append([label, pct(r["rank1"]), *cells])
    return table(["enrolment, scoring", "rank-1", "DIR @ 1e-2", "DIR @ 1e-3"], rows)


GPU_ROWS = {
    "pytorch_cuda_fp32": "PyTorch CUDA FP32, eager",
    "pytorch_cuda_fp16": "PyTorch CUDA FP16, eager",
    "pytorch_cuda_fp16_channels_last": "FP16, channels-last, eager",
    "pytorch_cuda_fp16_channels_last_cuda_graph": "FP16, channels-last, CUDA graph",
}


def gpu(results: Path = RESULTS) -> str:
    """``gpu.json``: the embedder's faces/s on the GPU by batch size."""
    data: dict[str, dict[str, float]] = load("gpu.json", results)["faces_per_second"]
    batches = list(next(iter(data.values())))
    rows = [[GPU_ROWS.get(name, name), *(whole(r[b]) for b in batches)] for name, r in data.items()]
    return table(["embedder, faces/s", *(b.replace("_", " ") for b in batches)], rows)


def gateway_load(results: Path = RESULTS) -> str:
    """``gateway_load.json`` and ``gateway_triton/gateway_load.json``: requests/s, latency and
    batching per endpoint and number of clients, on the CPU backend and on Triton."""
    local = load("gateway_load.json", results)["results"]
    triton = load("gateway_triton/gateway_load.json", results)["results"]
    rows = []
    for endpoint, by_clients in local.items():
        for clients, r in by_clients.items():
            t = triton[endpoint][clients]
            ms = r["latency_ms"]
            rows.append(
                [
                    endpoint,
                    clients,
                    f"{r['requests_per_second']:.1f}",
                    *(whole(ms[p]) for p in ("p50", "p95", "p99")),
                    f"{r['mean_batch_images']:.1f}",
                    f"{t['requests_per_second']:.1f}",
                    whole(t["latency_ms"]["p99"]),
                ]
            )
    header = ["endpoint", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"]
    return table([*header, "on Triton: req/s", "p99 ms"], rows)


def video(results: Path = RESULTS) -> str:
    """``video.md``: the tables ``python -m perf.video`` renders from ``video.json`` in the
    same run (its table code needs the benchmark's scene and server modules, so the site
    takes its output as it is)."""
    path = results / "video.md"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise PluginError(f"results table: cannot read {path}: {exc}") from exc


def dataset_lfw(results: Path = RESULTS) -> str:
    """``dataset-lfw/report.json`` (``facerec bench dataset`` on LFW laid out one folder per
    person) and ``dataset-lfw/check.json`` (its EER recomputed over every pair)."""
    r = load("dataset-lfw/report.json", results)
    check = load("dataset-lfw/check.json", results)
    d, v, i = r["dataset"], r["verification"], r["identification"]
    point = i["operating_point"]
    tar = v["tar_at_far"]
    failures = ", ".join(
        str(d["failures"][k]["count"]) for k in ("unreadable", "no_face", "refused")
    )
    rows = [
        ["people, files, faces used", f"{d['identities']:,}, {d['images']:,}, {d['faces_used']:,}"],
        ["not used: unreadable, no face, refused by the gates", failures],
        [
            "1:1 pairs: genuine, impostor (sampled of)",
            f"{v['genuine_pairs']:,}, {v['impostor_pairs']:,} "
            f"(of {v['impostor_pairs_in_dataset']:,})",
        ],
        [
            "EER; over every pair, from `facerec embed --single`",
            f"{pct(v['eer'], 2)}; {pct(check['eer_all_pairs'], 2)} "
            f"({check['impostor_pairs']:,} impostor pairs)",
        ],
        ["TAR at FAR 1e-3, 1e-4", f"{pct(tar['1e-3']['tar'], 2)}, {pct(tar['1e-4']['tar'], 2)}"],
        [
            "accuracy: best (10-fold), at the card's threshold",
            f"{pct(v['best_accuracy'], 2)}, {pct(v['accuracy_at_threshold'], 2)}",
        ],
        [
            "1:N gallery, strangers (people held out), mated searches",
            f"{i['split']['gallery_identities']:,}, {i['split']['nonmated_probes']:,} "
            f"({i['split']['heldout_identities']:,}), {i['split']['mated_probes']:,}",
        ],
        ["rank-1, rank-5", f"{pct(i['rank1'])}, {pct(i['rank5'])}"],
        [
            f"`identify`'s threshold for FPIR {point['configured_fpir']:g}: measured FPIR, DIR",
            f"{point['threshold']:.4f}: {pct(point['measured_fpir'], 2)} "
            f"({point['false_alarms']} strangers), {pct(point['dir'])}",
        ],
        [
            "speed: whole set; one image (p50 total)",
            f"{rate(r['images_per_second'])} images/s; "
            f"{r['latency_ms']['stages']['total']['p50']:.1f} ms",
        ],
    ]
    return table(["", "LFW as a user's folder"], rows)


def scale_goals(results: Path = RESULTS) -> str:
    """``scale/scale.json``: the scale-out goals and what was measured against each."""
    r = load("scale/scale.json", results)
    goals, take, rolling, audit = r["goals"], r["takeover"], r["rolling"], r["audit"]
    first = r["throughput"][0]
    replica_ms = first["cpu_ms_per_request"]["replicas"]
    pipeline_ms = 1e3 * r["pipeline"]["cpu_s_per_image"]
    runs = [1e3 * p["cpu_s_per_image"] for p in r["pipeline"].get("runs", [])]
    where = first.get("replica_threads", {})
    parts = ", ".join(f"{k} {v['cpu_ms']:.1f}" for k, v in where.items() if v["cpu_ms"] >= 0.3)
    jobs, streams = take["job_takeover_s"], take["stream_takeover_s"]
    lat = rolling["latency_ms"]
    verified = audit["verify"]

    def reached(ok: bool) -> str:
        return "reached" if ok else "not reached"

    measured = (
        f"{replica_ms:.1f} ms against {pipeline_ms:.1f} ms"
        + (f" (the mean of {' and '.join(f'{x:.1f}' for x in runs)})" if runs else "")
        + f": **{r['cpu_ratio']:.2f}x**"
    )
    if "cpu_ratio_pairs" in r:  # the median of interleaved pairs (pipeline, then load)
        pairs = r["cpu_ratio_pairs"]["pairs"]
        measured = (
            f"**{r['cpu_ratio']:.2f}x**, the median of {len(pairs)} interleaved pairs "
            "(the pipeline in-process, then one replica under load): "
            + ", ".join(
                f"{p['replica_ms']:.1f} ms against {p['pipeline_ms']:.1f} ({p['ratio']:.2f}x)"
                for p in pairs
            )
        )
    rows = [
        [
            f"gateway CPU per identify request ≤ {goals['cpu_ratio']}x the pipeline's CPU per "
            "image",
            measured
            + (f"; the one-replica load run's threads, per request: {parts} ms" if parts else ""),
            reached(r["cpu_ratio"] <= goals["cpu_ratio"]),
        ],
        [
            f"{goals['lost_or_duplicated']} lost or duplicated job results over {len(jobs)} kills",
            f"{take['jobs_exactly_once']} jobs, each worker holding one killed with SIGKILL: "
            f"**{take['jobs_lost_or_duplicated']}** lost or duplicated",
            reached(take["jobs_lost_or_duplicated"] <= goals["lost_or_duplicated"]),
        ],
        [
            f"job take-over ≤ {goals['job_takeover_s']:g} s (lease + 5 s)",
            f"**{min(jobs):.1f}-{max(jobs):.1f} s** after the SIGKILL ({len(jobs)} kills)",
            reached(max(jobs) <= goals["job_takeover_s"]),
        ],
        [
            f"stream take-over ≤ {goals['stream_takeover_s']:g} s",
            f"**{min(streams):.1f}-{max(streams):.1f} s** until streaming again under another "
            f"worker ({len(streams)} kills; the RTSP open included)",
            reached(max(streams) <= goals["stream_takeover_s"]),
        ],
        [
            f"{goals['rolling_5xx']} 5xx during rolling restarts",
            f"{rolling['requests']:,} identify requests while the replicas restarted in turn: "
            f"**{rolling['errors_5xx_or_transport']}** errors; p50 / p95 / p99 "
            f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} ms",
            reached(rolling["errors_5xx_or_transport"] <= goals["rolling_5xx"]),
        ],
        [
            f"the audit chain intact after {len(verified)} replicas append concurrently for "
            f"{audit['minutes']:g} minutes",
            f"{audit['events_appended']:,} events appended; `facerec audit verify` through "
            f"each replica's head: **{'intact' if audit['intact'] else 'broken'}** "
            f"({next(iter(verified.values()))['events']:,} events)",
            reached(audit["intact"]),
        ],
    ]
    return table(["goal", "measured", ""], rows)


def scale_throughput(results: Path = RESULTS) -> str:
    """``scale/scale.json`` (``throughput``): identify requests/s, latency and CPU per
    request of each process group, by the number of API replicas."""
    rows = []
    for t in load("scale/scale.json", results)["throughput"]:
        cpu = t["cpu_ms_per_request"]
        rows.append(
            [
                str(t["replicas"]),
                f"{t['requests_per_second']:.1f}",
                f"{t['latency_ms']['p50']:.0f} / {t['latency_ms']['p99']:.0f}",
                " / ".join(
                    f"{cpu[g]:.1f}" for g in ("replicas", "postgres", "milvus", "load_balancer")
                ),
            ]
        )
    header = [
        "API replicas",
        "identify req/s",
        "p50 / p99 ms",
        "CPU ms per request: replicas / PostgreSQL / Milvus / HAProxy",
    ]
    return table(header, rows)


TRITON_ROWS = (
    ("face_pipeline", "triton-grpc", "`face_pipeline`, Triton gRPC"),
    ("face_pipeline", "triton-http", "`face_pipeline`, Triton HTTP"),
    ("face_pipeline", "in-process", "full pipeline in-process"),
    ("embedder b8", "triton-grpc", "`embedder` 8 crops/request, Triton gRPC"),
    ("embedder b8", "in-process", "`embedder` 8 crops/request, in-process"),
)


def triton_perf(results: Path = RESULTS) -> str:
    """``triton/triton_perf.json``: images/s (or crops/s) and p99 latency by concurrency,
    Triton under perf_analyzer against the in-process backend."""
    r = load("triton/triton_perf.json", results)
    levels = [str(c) for c in r["settings"]["concurrency"]]
    rows = []
    for case, backend, label in TRITON_ROWS:
        runs = r["results"][case][backend]
        rows.append(
            [
                label,
                *(
                    f"{runs[c]['throughput']:.0f}, {runs[c]['latency_ms']['p99']:.0f}"
                    if runs[c]["throughput"] >= 100
                    else f"{runs[c]['throughput']:.1f}, {runs[c]['latency_ms']['p99']:.0f}"
                    for c in levels
                ),
            ]
        )
    header = [
        "images/s or crops/s, p99 ms",
        *(f"concurrency {c}" if c == levels[0] else c for c in levels),
    ]
    return table(header, rows)


def finetune_serving(results: Path = RESULTS) -> str:
    """``finetune_lfw.json`` (``by_precision``): the fine-tuned model on the serving path
    against the published one, on the test fold and the fold that chose the epoch."""
    r = load("finetune_lfw.json", results)
    rows = []
    for precision, v in r["by_precision"].items():
        test, other = str(v["test_fold"]), [str(f) for f in v["folds"] if f != v["test_fold"]]
        rows.append(
            [
                precision.upper(),
                pct(v["published"]["fold_accuracies"][test], 2),
                f"**{pct(v['fine_tuned']['fold_accuracies'][test], 2)}**",
                pct(v["fine_tuned"]["fold_accuracies"][other[0]], 2),
            ]
        )
    model = r["model"]
    header = [
        "precision",
        "published `facenet128`, fold 0",
        f"`{model}`, fold 0 (test)",
        f"`{model}`, fold 1 (chose the epoch)",
    ]
    return table(header, rows)


def finetune_folds(results: Path = RESULTS) -> str:
    """``finetune_lfw.json`` (``training``): the ten-fold protocol in PyTorch FP32."""
    t = load("finetune_lfw.json", results)["training"]
    rows = [
        [
            str(f["test_fold"]),
            str(f["validation_fold"]),
            pct(f["starting_model"], 2),
            pct(f["fine_tuned"], 2),
            str(f["best_epoch"]),
            f"{f['throughput']['images_per_second']:.0f}",
        ]
        for f in t["folds"]
    ]
    s = t["summary"]
    published = [f["starting_model"] for f in t["folds"]]
    tuned = [f["fine_tuned"] for f in t["folds"]]
    rows += [
        [
            "**mean ± std**",
            "",
            f"**{100 * s['starting_model_mean']:.2f} ± {100 * s['starting_model_std']:.2f} %**",
            f"**{100 * s['fine_tuned_mean']:.2f} ± {100 * s['fine_tuned_std']:.2f} %**",
            "",
            "",
        ],
        [
            "min - max",
            "",
            f"{100 * min(published):.2f} - {pct(max(published), 2)}",
            f"{100 * min(tuned):.2f} - {pct(max(tuned), 2)}",
            "",
            "",
        ],
        [
            "TAR @ FAR 1e-3 (6,000 pairs pooled)",
            "",
            pct(s["tar_at_far_1e-3_pooled"]["starting_model"], 2),
            pct(s["tar_at_far_1e-3_pooled"]["fine_tuned"], 2),
            "",
            "",
        ],
    ]
    header = [
        "test fold",
        "validation fold",
        "published weights",
        "fine-tuned (CPU)",
        "best epoch",
        "train images/s",
    ]
    return table(header, rows)


def tenth(x: float) -> str:
    """Rounded half up to one decimal (2.25 -> 2.3)."""
    return f"{math.floor(10 * x + 0.5) / 10:.1f}"


def ms(x: float) -> str:
    """Milliseconds: one decimal below 100 (2.2, 10.4, 47.1), whole above (137, 1,123)."""
    return tenth(x) if x < 100 else whole(x)


TIMES, MINUS = "\u00d7", "\u2212"  # the signs the pages print (× and −)


def signed_mb(x: float) -> str:
    """A change in megabytes, rounded half up, with its sign (+92 MB, +0 MB, −20 MB)."""
    n = math.floor(round(x, 1) + 0.5)
    return f"+{n:,} MB" if n >= 0 else f"{MINUS}{-n:,} MB"


def _three(x: float) -> str:
    """Three significant digits, with thousands separators (19,373 -> 19,400)."""
    return f"{round(x, 2 - math.floor(math.log10(x))):,.0f}"


def _duration(seconds: float) -> str:
    """Whole seconds below 10 minutes, whole minutes above (113 s, 27 min)."""
    return f"{whole(seconds)} s" if seconds < 600 else f"{whole(seconds / 60)} min"


def _gallery(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k"


def _recall(x: float) -> str:
    return "1" if x == 1 else f"{x:.3f}"


def _latency(d: Json, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    return " / ".join(ms(d[k]) for k in keys)


def _default_ef(row: Json) -> int:
    """The ef the row's single-probe latency and its second pass were measured at: the
    benchmark's default then (``default_ef``; earlier runs: the sweep entry it copied)."""
    if "default_ef" in row:
        return int(row["default_ef"])
    return int(next(s["ef"] for s in row["sweep"] if s["latency_ms"] == row["latency_ms"]))


def _one(values: list[Any], what: str) -> Any:
    """The value every row of a table shares (a header names it once)."""
    if any(v != values[0] for v in values):
        raise ValueError(f"the rows differ in {what}: {values}")
    return values[0]


def _efs(rows: list[Json]) -> list[int]:
    return list(_one([[s["ef"] for s in r["sweep"]] for r in rows], "the ef swept"))


def _recalls(row: Json) -> str:
    """recall@1 per ef, the second pass in brackets where it differed from the first."""
    default, cells = _default_ef(row), []
    for s in row["sweep"]:
        cell = _recall(s["recall_at_1"])
        again = row.get("repeat_recall_at_1")
        if s["ef"] == default and again is not None and again != s["recall_at_1"]:
            cell += f" ({again:.3f})"
        cells.append(cell)
    return " / ".join(cells)


def _loads(row: Json) -> str:
    """The load average before the insert, and its range over the ef sweep."""
    low, high = (tenth(f(s["load"] for s in row["sweep"])) for f in (min, max))
    return f"{tenth(row['load_before'])} / {low if low == high else f'{low}-{high}'}"


SEARCH_LOADED = "search_scaling/search_scaling_server_hnsw.json"
SEARCH_TENANCY = "search_scaling/after_tenancy/search_scaling_server_hnsw.json"
SEARCH_SETTLED = "search_scaling/after_fix/search_scaling_server_hnsw.json"
SEARCH_LITE = "search_scaling/search_scaling_lite_hnsw.json"
RECALL_NOTE = "in brackets, a second pass at {ef} where it differed"


def _at_default(rows: list[Json]) -> tuple[str, Callable[[Json], str]]:
    """How a table names the ef of its single-probe latency: in the header when every row
    shares it (``ef 64``), else in each cell (rows of runs with different defaults)."""
    efs = {_default_ef(r) for r in rows}
    if len(efs) == 1:
        return f"ef {efs.pop()}", lambda r: ""
    return "the default ef", lambda r: f"ef {_default_ef(r)}: "


def _search_server(name: str, results: Path) -> str:
    """One row per gallery size of a ``perf.search_scaling`` run on the Milvus server:
    insert, index build, single-probe latency (first and second pass), recall@1 by ef,
    batched probes, the identify path, ``facerec reindex`` and the load average."""
    rows: list[Json] = load(name, results)["rows"]
    ef, at = _at_default(rows)
    efs = " / ".join(map(str, _efs(rows)))
    reindex = any("reindex_seconds" in r for r in rows)
    out = []
    for r in rows:
        cells = [
            _gallery(r["gallery"]),
            f"{_three(r['insert_per_second'])}/s",
            _duration(r["index_build_seconds"]),
            f"{at(r)}{_latency(r['latency_ms'])} ms ({_latency(r['repeat_latency_ms'])})",
            _recalls(r),
            f"{whole(r['batch_queries_per_second'])}/s",
            f"{_latency(r['identify_path_ms'], ('p50', 'p95'))} ms",
        ]
        if reindex:
            cells.append(_duration(r["reindex_seconds"]) if "reindex_seconds" in r else "")
        out.append([*cells, _loads(r)])
    header = [
        "gallery",
        "insert",
        "index build",
        f"single probe p50 / p95 / p99 at {ef} (second pass)",
        f"recall@1, ef {efs} ({RECALL_NOTE.format(ef=ef)})",
        "batch of 100 probes",
        "identify path p50 / p95 (index + SQL)",
        *(["`facerec reindex`"] if reindex else []),
        "load avg. at insert / during the ef sweep",
    ]
    return table(header, out)


def search_scaling(results: Path = RESULTS) -> str:
    """``search_scaling/search_scaling_server_hnsw.json``: 1:N search on the Milvus server
    at 10k, 100k and 1M protected vectors, under load."""
    return _search_server(SEARCH_LOADED, results)


def search_tenancy(results: Path = RESULTS) -> str:
    """``search_scaling/after_tenancy/``: the same after the tenancy merge (filtered
    searches), at 10k and 100k."""
    return _search_server(SEARCH_TENANCY, results)


def search_settled(results: Path = RESULTS) -> str:
    """``search_scaling/after_fix/``: after the identify-path fix, 1M with the server
    settled: latency and server CPU per probe at the default ef and above."""
    rows: list[Json] = load(SEARCH_SETTLED, results)["rows"]
    ef, _ = _at_default(rows)
    efs = [e for e in _efs(rows) if e >= min(_default_ef(r) for r in rows)]
    out = []
    for r in rows:
        sweep = {s["ef"]: s for s in r["sweep"]}
        settle = r.get("settle_seconds")
        if "settle_seconds" not in r:
            state = "not settled"
        else:
            state = "settled" if settle is not None else "did not settle"
        build = _duration(r["index_build_seconds"])
        out.append(
            [
                f"{_gallery(r['gallery'])} ({state})",
                f"{_three(r['insert_per_second'])}/s",
                f"{build} (+ {_duration(settle)})" if settle is not None else build,
                *(f"{_latency(sweep[e]['latency_ms'])} ms" for e in efs),
                _recalls(r),
                " / ".join(tenth(sweep[e]["server_cpu_ms_per_probe"]) for e in efs) + " ms",
                f"{whole(r['batch_queries_per_second'])}/s",
                f"{_latency(r['identify_path_ms'])} ms",
                _loads(r),
            ]
        )
    header = [
        "gallery",
        "insert",
        "index build (+ settling)",
        f"single probe p50 / p95 / p99, ef {efs[0]}",
        *(f"ef {e}" for e in efs[1:]),
        f"recall@1, ef {' / '.join(map(str, _efs(rows)))} ({RECALL_NOTE.format(ef=ef)})",
        f"server CPU per probe, ef {' / '.join(map(str, efs))}",
        "batch of 100",
        "identify path p50 / p95 / p99",
        "load avg. at insert / during the ef sweep",
    ]
    return table(header, out)


def search_lite(results: Path = RESULTS) -> str:
    """``search_scaling/search_scaling_lite_hnsw.json``: 1:N search on Milvus Lite."""
    rows: list[Json] = load(SEARCH_LITE, results)["rows"]
    ef, at = _at_default(rows)
    out = [
        [
            _gallery(r["gallery"]),
            f"{at(r)}{_latency(r['latency_ms'], ('p50', 'p95'))} ms "
            f"({_latency(r['repeat_latency_ms'], ('p50', 'p95'))})",
            f"{_latency(r['identify_path_ms'], ('p50', 'p95'))} ms",
            _recalls(r),
            _loads(r),
        ]
        for r in rows
    ]
    header = [
        "gallery",
        f"single probe p50 / p95 at {ef}: first pass (second pass)",
        "identify path p50 / p95",
        f"recall@1 ({RECALL_NOTE.format(ef=ef)})",
        "load avg. at insert / during the first pass",
    ]
    return table(header, out)


def _times(text: str) -> str:
    """6000x6000 -> 6000×6000, 8 x 19 MB -> 8 × 19 MB."""
    return re.sub(r"(\d)( ?)x( ?)(\d)", rf"\1\2{TIMES}\3\4", text)


STATUS_CODE = re.compile(r"\b([45]\d\d) ([a-z]+(?:_[a-z]+)*)\b")
EVENTS = {"opened", "sent", "answered", "answered and closed", "cut by the server", "refused"}


def _answer(what: str, count: int) -> str:
    """One of the answers a benchmark counted, as the table shows it: ``503 busy`` x2 ->
    503 `busy` ×2, ``opened`` 48 -> 48 opened."""
    what = _times(what)
    if sent := re.fullmatch(r"MB sent before the close: (\d+)", what):
        return f"after {sent[1]} MB sent"
    if what in EVENTS:
        return f"{count:,} {what}"
    if what == "closed -":
        what = "closed, no close code read"
    what = STATUS_CODE.sub(r"\1 `\2`", what)
    return what if count == 1 else f"{what} {TIMES}{count:,}"


def _answers(counted: dict[str, int]) -> str:
    return "; ".join(_answer(what, count) for what, count in counted.items())


def gateway_dos(results: Path = RESULTS) -> str:
    """``gateway_dos.json`` (``runs``): the service's memory under each hostile input
    beside normal load, with its default settings, then the large images again without
    ``malloc_trim`` and with ``MALLOC_ARENA_MAX=2``."""
    runs = load("gateway_dos.json", results)["runs"]
    rows = []
    for k, run in enumerate(runs):
        for r in run["rows"]:
            label = _times(r["scenario"])
            rows.append(
                [
                    label if k == 0 else f"{label}: **{run['variant']}**",
                    _answers(r["answers"]),
                    signed_mb(r["peak_above_mb"]),
                    signed_mb(r["rss_after_mb"] - r["rss_before_mb"]),
                ]
            )
    header = ["scenario", "answers", "peak RSS above before", "RSS 3 s after, above before"]
    return table(header, rows)


def _p50(phase: Json) -> str:
    """A legitimate client's p50 in one phase (none when nothing was served)."""
    return f"{whole(phase['p50_ms'])} ms" if phase["p50_ms"] is not None else "none served"


def _served(phase: Json) -> str:
    return f"{phase['served']}/{phase['requests']}, {_p50(phase)}"


def gateway_dos_replayed(results: Path = RESULTS) -> str:
    """``gateway_dos.json`` (``round2``): each attack of the second hostile pass on the
    service while a legitimate client works: what the attacker got, the memory, and the
    legitimate client's answers and p50 before and during."""
    rows = load("gateway_dos.json", results)["round2"]
    after = _one(
        [next(k for k in r if re.fullmatch(r"rss_\d+s_after_above_mb", k)) for r in rows],
        "when RSS was read after",
    )
    out = []
    for r in rows:
        tag, what = r["scenario"].split(" ", 1)
        rest, ws = r["legit_rest"], r.get("legit_ws")
        out.append(
            [
                f"{tag}: {_times(what)}, {whole(r['attack_s'])} s",
                _answers(r["attacker_answers"]),
                signed_mb(r["peak_above_mb"]),
                signed_mb(r[after]),
                _p50(rest["before"]),
                _served(rest["during"]),
                _served(ws["during"]) if ws else "",
            ]
        )
    header = [
        "attack, its length",
        "the attacker got",
        "peak RSS",
        f"{after.split('_')[1].removesuffix('s')} s after",
        "legitimate REST before: p50",
        "during: served, p50",
        "legitimate WebSocket during: served, p50",
    ]
    return table(header, out)


FUSED = "facenet128+dlib128"
FUSION_OPENSET = tuple(f"openset/{m}/openset.json" for m in ("facenet128", "dlib128", FUSED))
FUSION_LFW = (
    "lfw_variants.json",
    "lfw/dlib128/similarity_flip_int8/lfw.json",
    f"lfw/{FUSED}/similarity_flip_int8/lfw.json",
    f"openset/{FUSED}/fusion.json",
)


def _calibrated(report: Json, fpir: str) -> tuple[float, float]:
    """DIR and measured FPIR at the thresholds calibrated on the other half."""
    point = report["calibrated"][fpir]
    return point["dir"], point["measured_fpir"]


def fusion(results: Path = RESULTS) -> str:
    """``openset/{facenet128,dlib128,facenet128+dlib128}/openset.json``, the fused model's
    ``fusion.json`` and the LFW ten-fold results: DIR at FPIR (G = 1,000 and all
    identities of a half, up to 3 images, centroid scoring, INT8, thresholds from the other
    half) and LFW accuracy, per model; for the fused model both the benchmark's figure and
    the one with the weight, too, chosen on the other half."""
    lfw_fn = load("lfw_variants.json", results)["similarity+flip, int8 (default)"]
    lfw_of = {
        "facenet128": lfw_fn,
        "dlib128": load(FUSION_LFW[1], results),
        FUSED: load(FUSION_LFW[2], results),
    }
    out = []
    for model in ("facenet128", "dlib128", FUSED):
        res = load(f"openset/{model}/openset.json", results)["results"]["centroid"]["3"]
        accuracy = lfw_of[model]
        cells = [pct(res[g]["calibrated"][f]["dir"]) for g, f in _FUSION_POINTS]
        label = f"`{model}`"
        if model == FUSED:
            card = load(FUSION_LFW[3], results)["card"]
            label += f" (the card's w = {card['weight']:g}), both halves pooled"
        out.append([label, *cells, f"{pct(accuracy['accuracy_mean'], 2)}"])
    honest = load(FUSION_LFW[3], results)
    for d in honest["directions"]:
        report = d["report"]
        cells = []
        for g, f in _FUSION_POINTS:
            dir_, fpir = _calibrated(report[g], f)
            cells.append(f"{pct(dir_)} (FPIR {100 * fpir:.2g} %)")
        label = (
            f"`{FUSED}`, w = {d['weight']:g} chosen on half {d['calibration_half']}, "
            f"reported on half {d['evaluation_half']}"
        )
        out.append([label, *cells, ""])
    header = [
        "model",
        "DIR at FPIR 1e-2, G = 1,000",
        "DIR at FPIR 1e-3, G = 1,000",
        "DIR at FPIR 1e-3, all identities",
        "LFW ten-fold (INT8, flip)",
    ]
    return table(header, out)


_FUSION_POINTS = (("1000", "0.01"), ("1000", "0.001"), ("all", "0.001"))


FUSION_SPEED = "fusion_speed/speed.json"


def fusion_speed(results: Path = RESULTS) -> str:
    """``fusion_speed/speed.json`` (``python -m perf.speed --sets lfw --models
    facenet128+dlib128``): images/s end to end of the fused model against FaceNet alone and
    the PyTorch-eager reference, on the worker-process path (``facerec embed``) and in
    threads."""
    runs = load(FUSION_SPEED, results)["end_to_end"]["lfw_250x250"]
    batch = next(k for k in runs if k.startswith("default, threads, batch ") and k[-2:] != " 1")
    pairs = {
        "worker processes (`facerec embed`)": (
            "default, worker processes",
            f"{FUSED}, worker processes",
        ),
        f"threads, {batch.rsplit(', ', 1)[1]}": (
            batch,
            f"{FUSED}, threads, {batch.split(', ')[-1]}",
        ),
    }
    out = []
    for path, (alone, fused) in pairs.items():
        a, f = runs[alone], runs[fused]
        out.append(
            [
                path,
                f"{rate(a['images_per_second'])}/s",
                f"{rate(f['images_per_second'])}/s",
                f"{f['images_per_second'] / a['images_per_second']:.2f}x",
                f"{f['speedup_vs_reference']:.1f}x",
                f"{tenth(a['stage_ms_per_image']['embed'])} / "
                f"{tenth(f['stage_ms_per_image']['embed'])} ms",
            ]
        )
    header = [
        "path (LFW 250x250 images)",
        "`facenet128`",
        f"`{FUSED}`",
        "fused / FaceNet alone",
        "fused / eager reference",
        "embed thread-ms per image, alone / fused",
    ]
    return table(header, out)


FUSION_SEARCH = "fusion_search.json"


def fusion_search(results: Path = RESULTS) -> str:
    """``fusion_search.json`` (``python -m perf.fusion_search``): the fused model's
    two-stage search (the index's nearest faces by FaceNet's slice, the first K subjects
    re-ranked by the fused score) against exhaustive fusion: the accepted matches it loses
    per K, by gallery size and FPIR."""
    doc = load(FUSION_SEARCH, results)
    ks = [k for k in doc["ks"] if k <= doc["gateway_k"]]
    out = []
    for size, by_fpir in doc["summary"].items():
        for fpir, row in by_fpir.items():
            out.append(
                [
                    "all" if size == "all" else f"{int(size):,}",
                    "none (rank-1)" if fpir == "rank1" else fpir,
                    f"{row['accepted_matches']:,}",
                    *(str(row["lost"][str(k)]) for k in ks),
                    f"{row['needed_k']} / {row['needed_hits']}",
                ]
            )
    header = [
        "gallery",
        "FPIR",
        "accepted matches (exhaustive)",
        *(f"lost at K = {k}" + (" (the gateway's)" if k == doc["gateway_k"] else "") for k in ks),
        f"largest K / hits needed (of {doc['hits']})",
    ]
    return table(header, out)


FUSION_SCALING = "search_scaling_fused/search_scaling_server_hnsw.json"
SPLIT_PARTS = ("index_search", "sql", "decrypt", "rank", "other")


def _settled(row: Json) -> str:
    """Whether a ``perf.search_scaling`` row was measured with the server settled."""
    if "settle_seconds" not in row:
        return "not settled"
    return "settled" if row["settle_seconds"] is not None else "did not settle"


def fusion_scaling(results: Path = RESULTS) -> str:
    """``search_scaling_fused/`` (``python -m perf.search_scaling --model
    facenet128+dlib128``): the gateway's identify path with the fused model's two-stage
    search (FaceNet's slice in Milvus, the first K subjects re-ranked with their sealed
    256-d templates), beside the single model's of the same size (``search_settled``'s
    run), and where the fused path's time goes."""
    fused: list[Json] = load(FUSION_SCALING, results)["rows"]
    single = {r["gallery"]: r for r in load(SEARCH_SETTLED, results)["rows"]}
    out = []
    for r in fused:
        one = single.get(r["gallery"])
        sweep = {s["ef"]: s for s in r["sweep"]}
        split = r["identify_split_ms"]
        out.append(
            [
                _gallery(r["gallery"]),
                f"{_latency(one['identify_path_ms'])} ms ({_settled(one)})" if one else "",
                f"{_latency(r['identify_path_ms'])} ms ({_settled(r)})",
                " / ".join(ms(split[k]["p50"]) for k in SPLIT_PARTS)
                + f" ms (means {' / '.join(ms(split[k]['mean']) for k in SPLIT_PARTS)})",
                _recall(sweep[_default_ef(r)]["recall_at_1"]),
                _recall(r["identify_rank1"]),
                _loads(r),
            ]
        )
    ef = _one([_default_ef(r) for r in fused], "the default ef")
    header = [
        "gallery",
        "facenet128: identify path p50 / p95 / p99",
        "facenet128+dlib128 (two-stage): p50 / p95 / p99",
        "two-stage, p50 (mean): index search / SQL read / decrypt / fused re-rank / rest",
        f"first stage recall@1, ef {ef} (vs exact, FaceNet slice)",
        "own subject ranked first",
        "load avg. at insert / during the ef sweep",
    ]
    return table(header, out)


FUSION_TAIL = "fusion_tail.json"


def fusion_tail(results: Path = RESULTS) -> str:
    """``fusion_tail.json`` (``python -m perf.fusion_tail``): the strangers that score
    highest against the fused model's gallery (each half's top five), with each part's
    cosine and z-score: whether the parts' errors are independent where it matters."""
    doc = load(FUSION_TAIL, results)
    parts = doc["parts"]
    out = []
    for half in (0, 1):
        for s in [s for s in doc["strangers"] if s["half"] == half][:5]:
            out.append(
                [
                    str(half),
                    f"{s['probe']} → {s['subject']}",
                    f"{s['fused']:.3f}",
                    *(f"{c:.3f} (z {z:+.1f})" for c, z in zip(s["cosine"], s["z"], strict=True)),
                ]
            )
    header = ["half", "stranger → gallery subject", "fused", *(f"{p} cosine" for p in parts)]
    return table(header, out)


def fusion_ceiling(results: Path = RESULTS) -> str:
    """``fusion_tail.json``: DIR at G = 1,000 per FaceNet part weight, each half's
    thresholds set on its own strangers (no held-out calibration: the ceiling)."""
    doc = load(FUSION_TAIL, results)
    out = []
    for row in doc["ceiling"]:
        halves = row["dir_by_half"]
        out.append(
            [
                f"{row['facenet_weight']:.2f}",
                *(" / ".join(pct(h[f]) for h in halves) for f in ("0.001", "0.01")),
            ]
        )
    header = ["FaceNet weight a", "DIR at 1e-3, half 0 / half 1", "DIR at 1e-2, half 0 / half 1"]
    return table(header, out)


# Each table: the function that makes it and the files it comes from (named under it).
TABLES: dict[str, tuple[Callable[[Path], str], tuple[str, ...]]] = {
    "lfw": (lfw, ("lfw_variants.json",)),
    "speed": (speed, ("speed.json",)),
    "cli_files": (cli_files, ("cli_files.json",)),
    "openset_thresholds": (openset_thresholds, ("openset.json",)),
    "openset_galleries": (openset_galleries, ("openset.json",)),
    "openset_enrolment": (openset_enrolment, ("openset.json",)),
    "gpu": (gpu, ("gpu.json",)),
    "gateway_load": (gateway_load, ("gateway_load.json", "gateway_triton/gateway_load.json")),
    "video": (video, ("video.md",)),
    "finetune_serving": (finetune_serving, ("finetune_lfw.json",)),
    "finetune_folds": (finetune_folds, ("finetune_lfw.json",)),
    "triton_perf": (triton_perf, ("triton/triton_perf.json",)),
    "scale_goals": (scale_goals, ("scale/scale.json",)),
    "scale_throughput": (scale_throughput, ("scale/scale.json",)),
    "dataset_lfw": (dataset_lfw, ("dataset-lfw/report.json", "dataset-lfw/check.json")),
    "search_scaling": (search_scaling, (SEARCH_LOADED,)),
    "search_tenancy": (search_tenancy, (SEARCH_TENANCY,)),
    "search_settled": (search_settled, (SEARCH_SETTLED,)),
    "search_lite": (search_lite, (SEARCH_LITE,)),
    "gateway_dos": (gateway_dos, ("gateway_dos.json",)),
    "gateway_dos_replayed": (gateway_dos_replayed, ("gateway_dos.json",)),
    "fusion": (fusion, (*FUSION_OPENSET, *FUSION_LFW)),
    "fusion_speed": (fusion_speed, (FUSION_SPEED,)),
    "fusion_search": (fusion_search, (FUSION_SEARCH,)),
    "fusion_scaling": (fusion_scaling, (FUSION_SCALING, SEARCH_SETTLED)),
    "fusion_ceiling": (fusion_ceiling, (FUSION_TAIL,)),
    "fusion_tail": (fusion_tail, (FUSION_TAIL,)),
}
NOTES = {"video": " (`python -m perf.video` writes it from `video.json` in the same run)"}


def render(name: str, results: Path = RESULTS) -> str:
    """The table called ``name``, made from its JSON files under ``results``, and a line
    naming them."""
    if name not in TABLES:
        raise PluginError(f"results table {name!r}: none of {sorted(TABLES)}")
    make, sources = TABLES[name]
    try:
        text = make(results)
    except (KeyError, IndexError, TypeError, ValueError, StopIteration) as exc:
        raise PluginError(f"results table {name!r}: unexpected JSON ({exc!r})") from exc
    names = " and ".join(f"`perf/results/{source}`" for source in sources)
    note = f"Generated from {names}{NOTES.get(name, '')} when this page was built."
    return f"{text}\n\n<small>{note}</small>"


def expand(markdown: str, results: Path = RESULTS) -> str:
    """``markdown`` with every results marker replaced by its table."""
    return MARKER.sub(lambda m: render(m.group(1), results), markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)


if __name__ == "__main__":
    for arg in sys.argv[1:] or sorted(TABLES):
        print(render(arg), end="\n\n")
