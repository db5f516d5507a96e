"""Triton under NVIDIA perf_analyzer against the in-process backend, at the same concurrency.

    python -m perf.triton_perf --out perf/results/triton

generates the CPU model repository in a throwaway folder and starts the real
``tritonserver`` on free loopback ports (or uses ``--url HOST:GRPC_PORT`` and
``--http-url HOST:HTTP_PORT`` of a running one), then, for each concurrency of
``--concurrency``, runs perf_analyzer (``.venv/opt/perf_analyzer``, from
``scripts/install_triton.sh``; synchronous clients, one request each in flight) over gRPC
and over HTTP against

- ``face_pipeline`` (the ensemble: detect, align with mirror crops, embed, fuse) with the
  gallery images edge-padded by 50 px, one image per request, and
- ``embedder`` with real aligned 160 px crops of those images, batch 1 and batch 8,

and, right after, the same work in this process: N threads sharing one
``FacePipeline.local()``, calling ``analyze([image])`` (the ensemble's work, flip
included) or ``embedder.embed(crops)`` (the embedder model's work: no flip) for as long as
perf_analyzer measures (three windows). Throughput counts inferences: images for the
ensemble, crops for the embedder. Client, server and any other job share the machine's
cores; ``os.getloadavg()`` and the CPU time other processes used are recorded per run.
Writes ``triton_perf.json``, ``triton_perf.png`` and ``README.md`` (``--quick``:
``triton_perf_quick.json`` and ``.png`` only) and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devkit.servers import free_port
from perf.common import figure, machine, percentiles, record, write_json

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "tests" / "data" / "gallery"
PERF_ANALYZER = ROOT / ".venv" / "opt" / "perf_analyzer"
PAD = 50
SERIES = ("triton-grpc", "triton-http", "in-process")


@dataclass(frozen=True)
class Case:
    """One model at one client batch size."""

    label: str
    model: str  # the Triton model
    batch: int  # -b: items per request


CASES = (
    Case("face_pipeline", "face_pipeline", 1),
    Case("embedder b1", "embedder", 1),
    Case("embedder b8", "embedder", 8),
)


# ---------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    images: list[np.ndarray]  # uint8[H, W, 3], padded
    crops: np.ndarray  # uint8[N, 160, 160, 3]
    faces_per_image: list[int]
    names: list[str]


def load_inputs(n_images: int) -> Inputs:
    from facerec.imaging.decode import read_image
    from facerec.imaging.pad import pad_edges
    from facerec.pipeline import FacePipeline

    paths = sorted(GALLERY.glob("*.jpg"))[:n_images]
    images = [pad_edges(read_image(p), PAD) for p in paths]
    pipeline = FacePipeline.local()
    detections = pipeline.detect(images)
    crops = [pipeline.align(img, det) for img, det in zip(images, detections, strict=True)]
    return Inputs(
        images, np.concatenate(crops), [len(d) for d in detections], [p.name for p in paths]
    )


def _tensor(array: np.ndarray) -> dict[str, Any]:
    """perf_analyzer's input-data entry; base64 instead of a flat ``content`` list keeps
    the file a third of the size (40 images: 20 MB instead of 60)."""
    return {"b64": base64.b64encode(array.tobytes()).decode(), "shape": list(array.shape)}


def write_input_data(inputs: Inputs, folder: Path) -> dict[str, Path]:
    """One JSON file per model: a stream of steps, one image (or one crop) each; with
    ``-b 8`` perf_analyzer fills a request from eight consecutive steps."""
    files = {"face_pipeline": folder / "face_pipeline.json", "embedder": folder / "embedder.json"}
    files["face_pipeline"].write_text(
        json.dumps({"data": [{"IMAGE": _tensor(img)} for img in inputs.images]})
    )
    files["embedder"].write_text(
        json.dumps({"data": [{"CROPS": _tensor(crop)} for crop in inputs.crops]})
    )
    return files


# ----------------------------------------------------------------------- the machine load


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds so far) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _ours(table: dict[int, tuple[int, float]], root: int | None = None) -> set[int]:
    """This process (or ``root``) and its descendants (tritonserver, its stubs,
    perf_analyzer)."""
    ours = {os.getpid() if root is None else root}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in table.items() if ppid in ours} - ours
        ours |= new
        grew = bool(new)
    return ours


def _names(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        out.append(f"{pid}: {cmd.decode(errors='replace').strip()[:140]}")
    return out


@contextmanager
def watch_load(row: dict[str, Any]) -> Iterator[None]:
    """Record loadavg before and after, and the cores other processes kept busy."""
    before = _proc_cpu()
    start = time.perf_counter()
    row["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    yield
    wall = time.perf_counter() - start
    after = _proc_cpu()
    row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    ours = _ours(after) | _ours(before)
    used = {
        pid: after[pid][1] - before[pid][1]
        for pid in after.keys() & before.keys()
        if pid not in ours
    }
    row["other_processes_cores"] = round(sum(used.values()) / wall, 2)
    row["our_processes_cores"] = round(
        sum(after[p][1] - before[p][1] for p in ours & after.keys() & before.keys()) / wall, 2
    )
    busy = sorted((p for p in used if used[p] / wall > 0.1), key=lambda p: -used[p])
    row["other_busy_processes"] = _names(busy[:3])


# ------------------------------------------------------------------------- perf_analyzer


def perf_analyzer_command(
    case: Case,
    protocol: str,
    url: str,
    concurrency: int,
    data: Path,
    csv_file: Path,
    args: argparse.Namespace,
    stability: float,
) -> list[str]:
    return [
        str(args.perf_analyzer / "bin" / "perf_analyzer"),
        "-m",
        case.model,
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        str(case.batch),
        "--input-data",
        str(data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(args.measurement_interval),
        "--stability-percentage",
        str(stability),
        "--max-trials",
        str(args.max_trials),
        "-f",
        str(csv_file),
    ]


def run_perf_analyzer(
    case: Case,
    protocol: str,
    url: str,
    concurrency: int,
    data: Path,
    folder: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One perf_analyzer run; when it finds no stable measurement, once more with the
    stability check relaxed (noted in the row)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer / "lib"))
    csv_file = folder / "out.csv"
    row: dict[str, Any] = {}
    attempts = []
    for stability in (args.stability_percentage, 1000.0):
        csv_file.unlink(missing_ok=True)
        cmd = perf_analyzer_command(
            case, protocol, url, concurrency, data, csv_file, args, stability
        )
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=args.run_timeout
            )
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = -1, f"timed out after {args.run_timeout} s: {exc.stdout!r}"
        attempts.append(
            {
                "command": f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} {shlex.join(cmd)}",
                "returncode": code,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        if code == 0 and csv_file.exists():
            row.update(parse_csv(csv_file.read_text(), case.batch))
            row.update(parse_stdout(out))
            row["stability_relaxed"] = stability != args.stability_percentage
            break
        attempts[-1]["output_tail"] = out.strip()[-1500:]
    row["attempts"] = attempts
    row["command"] = attempts[-1]["command"]
    if "throughput" not in row:
        row["error"] = attempts[-1].get("output_tail", "no CSV written")
    return row


def parse_csv(text: str, batch: int) -> dict[str, Any]:
    """perf_analyzer's CSV row (microseconds) as milliseconds."""
    rec = next(csv.DictReader(io.StringIO(text)))
    ms = {k: round(float(v) / 1e3, 2) for k, v in rec.items() if k not in ("Concurrency",)}
    ips = float(rec["Inferences/Second"])
    return {
        "throughput": round(ips, 2),
        "requests_per_second": round(ips / batch, 2),
        "latency_ms": {q: ms[f"{q} latency"] for q in ("p50", "p90", "p95", "p99")},
        "breakdown_ms": {
            k: v for k, v in ms.items() if "latency" not in k and k != "Inferences/Second"
        },
    }


def parse_stdout(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = re.search(r"Client:\s*\n\s*Request count: (\d+)", text)
    if found:
        out["requests"] = int(found.group(1))
    found = re.search(r"Avg latency: (\d+) usec", text)
    if found:
        out["latency_ms_mean"] = round(int(found.group(1)) / 1e3, 2)
    return out


# ---------------------------------------------------------------------------- in-process


def run_threads(
    work: Callable[[int], int], concurrency: int, duration: float, batch: int
) -> dict[str, Any]:
    """``concurrency`` threads, each calling ``work(step)`` back to back for ``duration``
    seconds (calls in flight at the end finish and count)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        barrier.wait()
        step = k * 7919
        mine = []
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            work(step)
            mine.append(time.perf_counter() - t)
            step += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + duration
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latency_ms = percentiles(latencies, ("p50", "p90", "p95", "p99", "mean"), digits=2)
    return {
        "throughput": round(len(latencies) * batch / wall, 2),
        "requests_per_second": round(len(latencies) / wall, 2),
        "requests": len(latencies),
        "latency_ms": latency_ms,
        "latency_ms_mean": latency_ms["mean"],
        "wall_seconds": round(wall, 2),
    }


def in_process_work(case: Case, pipeline: Any, inputs: Inputs) -> Callable[[int], int]:
    if case.model == "face_pipeline":
        images = inputs.images

        def analyze(step: int) -> int:
            return len(pipeline.analyze([images[step % len(images)]])[0].faces)

        return analyze
    crops, b = inputs.crops, case.batch

    def embed(step: int) -> int:
        idx = [(step * b + i) % len(crops) for i in range(b)]
        return len(pipeline.embedder.embed(crops[idx]))

    return embed


def threads_check(inputs: Inputs, seconds: float) -> dict[str, Any]:
    """ms per ``embed`` call, one caller, with one intra-op thread (the in-process pipeline)
    and with one per core (the Triton embedder's ``threads 0``), at batch 1 and 8: shows
    what the embedder's thread setting costs when other jobs hold cores."""
    from facerec.embedding import OnnxEmbedder
    from facerec.models import load_model_card, model_path
    from facerec.runtime import default_threads

    card = load_model_card()
    out: dict[str, Any] = {}
    for threads in (1, default_threads()):
        embedder = OnnxEmbedder(model_path(f"{card.name}-int8-serving"), card, threads)
        for b in (1, 8):
            row: dict[str, Any] = {}
            with watch_load(row):
                timed = run_threads(
                    lambda step, e=embedder, b=b: len(e.embed(inputs.crops[:b])), 1, seconds, b
                )
            row["ms_per_call"] = timed["latency_ms_mean"]
            out[f"threads={threads} batch={b}"] = row
    return out


# ---------------------------------------------------------------------------- the server


@contextmanager
def triton(args: argparse.Namespace, folder: Path) -> Iterator[dict[str, Any]]:
    """The server's URLs: the given ones, or a fresh tritonserver's."""
    if args.url:
        host = args.url.rsplit(":", 1)[0]
        yield {"kind": "external", "grpc": args.url, "http": args.http_url or f"{host}:8000"}
        return
    from facerec.triton.repository import write_repository
    from facerec.triton.server import TritonServer

    repository = folder / "repository"
    models = write_repository("cpu", repository)
    configs = {m: (repository / m / "config.pbtxt").read_text() for m in models}
    info: dict[str, Any] = {"kind": "spawned", "models": models}
    start = time.perf_counter()
    log_path = folder / "triton.log"
    try:
        with (
            log_path.open("wb") as log,
            TritonServer(repository, free_port(), free_port(), free_port(), log=log) as server,
        ):
            info.update(grpc=server.grpc_url, http=server.http_url)
            info["startup_seconds"] = round(time.perf_counter() - start, 1)
            info["instances"] = {
                m: re.findall(r"instance_group \[([^\]]*)\]", c)[0].strip()
                for m, c in configs.items()
                if "instance_group" in c
            }
            info["dynamic_batching"] = {
                m: re.findall(r"dynamic_batching \{([^}]*)\}", c)[0].strip()
                for m, c in configs.items()
                if "dynamic_batching" in c
            }
            yield info
    finally:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        problems = [ln.strip() for ln in text.splitlines() if re.match(r"^[EF]\d{4}", ln)]
        cuda = [ln for ln in problems if "CUDA" in ln or "Cuda" in ln]
        info["log_problems"] = [ln for ln in problems if ln not in cuda][:30]
        info["log_cuda_errors"] = {"count": len(cuda), "first": cuda[:2]}  # no GPU here


# -------------------------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> None:
    """Per case one row: throughput vs concurrency, p99 latency vs concurrency."""
    cases = list(result["results"])
    size = (11, 3.4 * len(cases))
    with figure(path, len(cases), 2, figsize=size, dpi=110, squeeze=False) as (fig, axes):
        colours = {
            "triton-grpc": "tab:blue",
            "triton-http": "tab:orange",
            "in-process": "tab:green",
        }
        conc = result["settings"]["concurrency"]
        for (a, b), case in zip(axes, cases, strict=True):
            unit = "images/s" if case == "face_pipeline" else "crops/s"
            for series, runs in result["results"][case].items():
                ok = {int(c): r for c, r in runs.items() if "throughput" in r}
                xs = sorted(ok)
                kw = {"color": colours[series], "label": series, "marker": "o"}
                a.plot(xs, [ok[x]["throughput"] for x in xs], **kw)
                b.plot(xs, [ok[x]["latency_ms"]["p99"] for x in xs], **kw)
            a.set_ylabel(unit)
            a.set_ylim(bottom=0)
            a.set_title(f"{case}: throughput", fontsize=10)
            b.set_ylabel("p99 latency (ms)")
            b.set_ylim(bottom=0)
            b.set_title(f"{case}: p99 latency per request", fontsize=10)
            for ax in (a, b):
                ax.set_xscale("log", base=2)
                ax.set_xticks(conc)
                ax.set_xticklabels([str(c) for c in conc])
                ax.set_xlabel("concurrent requests")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=8)
        m = result["machine"]
        fig.suptitle(
            f"Triton (perf_analyzer) vs in-process, {m['cpu_count']} CPU cores shared by client, "
            f"server and other load (median load {result['load']['median_other_cores']:.1f} cores)"
        )


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for case, by_series in result["results"].items():
        for c in result["settings"]["concurrency"]:
            for series in by_series:
                r = by_series[series].get(str(c), {})
                if "throughput" not in r:
                    rows.append([case, str(c), series, "error", "", "", "", ""])
                    continue
                q = r["latency_ms"]
                rows.append(
                    [
                        case,
                        str(c),
                        series,
                        f"{r['throughput']:.1f}",
                        f"{q['p50']:.1f}",
                        f"{q['p90']:.1f}",
                        f"{q['p99']:.1f}",
                        f"{r.get('other_processes_cores', float('nan')):.1f}",
                    ]
                )
    return rows


HEAD = ["case", "conc", "series", "infer/s", "p50 ms", "p90 ms", "p99 ms", "other cores"]


def table(result: dict[str, Any]) -> str:
    rows = [HEAD, *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    return "\n".join(
        " ".join(
            v.ljust(w) if i < 3 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def _best(runs: dict[str, dict[str, Any]], c: int, key: Callable[[dict[str, Any]], float]) -> str:
    ok = {s: r[str(c)] for s, r in runs.items() if "throughput" in r.get(str(c), {})}
    return max(ok, key=lambda s: key(ok[s])) if ok else "-"


def findings(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers: who wins where, by how much."""
    out = []
    conc = result["settings"]["concurrency"]
    wins = {"throughput": dict.fromkeys(SERIES, 0), "p99": dict.fromkeys(SERIES, 0)}
    http_over_grpc = []
    for runs in result["results"].values():
        for c in conc:
            got = {s: r[str(c)] for s, r in runs.items() if "throughput" in r.get(str(c), {})}
            if len(got) > 1:
                wins["throughput"][max(got, key=lambda s: got[s]["throughput"])] += 1
                wins["p99"][min(got, key=lambda s: got[s]["latency_ms"]["p99"])] += 1
            if "triton-grpc" in got and "triton-http" in got:
                http_over_grpc.append(
                    got["triton-http"]["throughput"] / got["triton-grpc"]["throughput"]
                )
    rows = sum(wins["throughput"].values())
    if rows:
        out.append(
            f"Of {rows} case x concurrency points, the highest throughput was "
            + ", ".join(f"{s} {n}" for s, n in wins["throughput"].items())
            + "; the lowest p99 "
            + ", ".join(f"{s} {n}" for s, n in wins["p99"].items())
            + "."
        )
    if http_over_grpc:
        ratio = np.asarray(http_over_grpc)
        out.append(
            f"HTTP vs gRPC (same server): HTTP throughput / gRPC throughput has median "
            f"{np.median(ratio):.2f}, range {ratio.min():.2f}-{ratio.max():.2f}, HTTP ahead in "
            f"{int((ratio > 1).sum())} of {len(ratio)} points"
            + (
                ": no consistent difference at this noise level."
                if 0.9 < np.median(ratio) < 1.1
                else "."
            )
        )
    for case, runs in result["results"].items():
        unit = "images/s" if case == "face_pipeline" else "crops/s"
        parts = []
        for c in conc:
            got = {s: r[str(c)] for s, r in runs.items() if "throughput" in r.get(str(c), {})}
            if len(got) < 2:
                continue
            fast = max(got, key=lambda s: got[s]["throughput"])
            low = min(got, key=lambda s: got[s]["latency_ms"]["p99"])
            others = sorted((got[s]["throughput"] for s in got if s != fast), reverse=True)
            ratio = got[fast]["throughput"] / others[0] if others[0] else float("inf")
            parts.append(
                f"at {c}: {fast} {got[fast]['throughput']:.1f} {unit} ({ratio:.2f}x the next), "
                f"lowest p99 {low} {got[low]['latency_ms']['p99']:.0f} ms"
            )
        if parts:
            out.append(f"**{case}**: " + "; ".join(parts) + ".")
        first = runs.get("triton-grpc", {}).get(str(conc[0]), {})
        if "breakdown_ms" in first:
            d = first["breakdown_ms"]
            wire = d["Client Send"] + d["Network+Server Send/Recv"] + d["Client Recv"]
            server = sum(v for k, v in d.items() if k.startswith("Server"))
            out.append(
                f"{case} over gRPC at concurrency {conc[0]}: client and transport "
                f"{wire:.1f} ms of a request, the server {server:.1f} ms (queue and compute)"
                + (
                    ": Triton's cost is on the server side, not on the wire."
                    if wire < 0.1 * (wire + server)
                    else "."
                )
            )
    check = result.get("embedder_threads_check", {})
    if check:
        keys = list(check)
        calls = ", ".join(f"{k}: {check[k]['ms_per_call']:.1f} ms" for k in keys)
        out.append(
            f"Embedder intra-op threads, one caller in-process ({calls}; other processes "
            f"using {check[keys[0]]['other_processes_cores']:.1f} cores): the Triton embedder "
            "runs with one thread per core (`threads 0`), the in-process pipeline with one."
        )
    return out


def readme(result: dict[str, Any], notes: list[str]) -> str:
    rows = table_rows(result)
    lines = [
        "# Triton vs in-process (CPU)",
        "",
        "Made by `python -m perf.triton_perf --out perf/results/triton` "
        f"({result['finished']}); raw numbers and every perf_analyzer command in "
        "`triton_perf.json`, plot in `triton_perf.png`.",
        "",
        f"Machine: {result['machine']['cpu_count']} CPU cores, no GPU; perf_analyzer, "
        "tritonserver and the in-process threads share them. Other jobs on the machine kept "
        f"a median {result['load']['median_other_cores']:.1f} cores busy during the runs "
        f"(loadavg {result['load']['loadavg_before']} before, "
        f"{result['load']['loadavg_after']} after)"
        + (
            ", so absolute numbers are low and noisy"
            if result["load"]["median_other_cores"] >= 0.2
            else ""
        )
        + "; the series were run back to back per concurrency so they saw similar load.",
        "",
        "Throughput counts inferences: images for `face_pipeline`, crops for `embedder` "
        "(`b8`: 8 crops per request). Latency is per request. 'other cores': CPU other "
        "processes used during that run.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEAD))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "## Where each wins",
        "",
        *(f"- {line}" for line in findings(result)),
        "",
        *notes,
        "",
    ]
    return "\n".join(lines)


NOTES = [
    "Reading it:",
    "",
    "- Same work on both sides: the ensemble and `analyze([image])` both detect, align, "
    "embed face and mirror and fuse; the `embedder` model and `embedder.embed` run the same "
    "int8 serving graph without flip.",
    "- Threads differ: the in-process pipeline (default config) runs ONNX Runtime with one "
    "intra-op thread per call and gets parallelism from concurrent callers; the Triton "
    "embedder uses all cores per execution (`threads 0`) and dynamic batching (2 ms queue "
    "delay), the detector two single-threaded instances.",
    "- Triton pays per request for serialisation, loopback transport and the Python-backend "
    "stubs' shared-memory hops between ensemble steps; the in-process path pays none of that "
    "but holds the GIL in MTCNN's numpy glue.",
    "- Beyond one request per core, more concurrency adds throughput only by taking a larger "
    "share of the CPU from the other jobs (more runnable threads); otherwise it shows as "
    "latency (queueing in the server, or for the GIL in-process).",
    "- Each perf_analyzer row merges its last three stable windows; the in-process rows run "
    "for the same time. With a few dozen requests per run, p99 is close to the maximum.",
]


# ---------------------------------------------------------------------------------- main


def run_all(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from facerec.pipeline import FacePipeline

    began = time.perf_counter()
    load_start = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    inputs = load_inputs(args.images)
    data = write_input_data(inputs, folder)
    pipeline = FacePipeline.local()
    cases = [c for c in CASES if c.label in args.cases]
    results: dict[str, dict[str, dict[str, Any]]] = {
        c.label: {s: {} for s in SERIES if s == "in-process" or s[7:] in args.protocols}
        for c in cases
    }
    with triton(args, folder) as server:
        for case in cases:  # warm-up: first calls
            run_threads(in_process_work(case, pipeline, inputs), 1, 0.5, case.batch)
        for case in cases:
            for c in args.concurrency:
                for protocol in args.protocols:
                    row: dict[str, Any] = {}
                    with watch_load(row):
                        row.update(
                            run_perf_analyzer(
                                case,
                                protocol,
                                server[protocol],
                                c,
                                data[case.model],
                                folder,
                                args,
                            )
                        )
                    results[case.label][f"triton-{protocol}"][str(c)] = row
                    _progress(case, c, f"triton-{protocol}", row)
                row = {}
                duration = 3 * args.measurement_interval / 1000
                with watch_load(row):
                    work = in_process_work(case, pipeline, inputs)
                    row.update(run_threads(work, c, duration, case.batch))
                results[case.label]["in-process"][str(c)] = row
                _progress(case, c, "in-process", row)
        check = threads_check(inputs, args.measurement_interval / 1000)
    others = [
        r["other_processes_cores"]
        for runs in results.values()
        for series in runs.values()
        for r in series.values()
        if "other_processes_cores" in r
    ]
    return record(
        settings={
            "concurrency": args.concurrency,
            "protocols": args.protocols,
            "cases": [c.__dict__ for c in cases],
            "measurement_interval_ms": args.measurement_interval,
            "stability_percentage": args.stability_percentage,
            "max_trials": args.max_trials,
            "perf_analyzer_mode": "synchronous (one thread per concurrent request), "
            "time_windows, result merged over the last 3 stable windows",
            "in_process_seconds": 3 * args.measurement_interval / 1000,
            "in_process": "threads sharing one FacePipeline.local() (default PipelineConfig: "
            f"{pipeline.workers} workers, 1 intra-op thread per call); face_pipeline: "
            "analyze([image]); embedder: pipeline.embedder.embed(crops) (no flip, as the model)",
            "quick": args.quick,
        },
        machine=machine(perf_analyzer=_version(args)),
        load={
            **load_start,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "median_other_cores": round(float(np.median(others)), 2) if others else 0.0,
            "max_other_cores": round(max(others), 2) if others else 0.0,
        },
        inputs={
            "images": len(inputs.images),
            "files": inputs.names,
            "pad_px": PAD,
            "image_shapes": sorted({str(list(i.shape)) for i in inputs.images}),
            "faces_per_image": inputs.faces_per_image,
            "crops": len(inputs.crops),
            "encoding": "perf_analyzer --input-data JSON, b64 + shape per step",
        },
        server=server,
        commands=[
            r["command"]
            for runs in results.values()
            for series in runs.values()
            for r in series.values()
            if "command" in r
        ],
        results=results,
        embedder_threads_check=check,
        runtime_seconds=round(time.perf_counter() - began, 1),
        finished=time.strftime("%Y-%m-%d %H:%M"),
    )


def _version(args: argparse.Namespace) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer / "lib"))
    binary = str(args.perf_analyzer / "bin" / "perf_analyzer")
    try:
        out = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True)
    except OSError as exc:
        return f"not runnable: {exc}"
    return (out.stdout + out.stderr).strip().splitlines()[-1] if out.stdout or out.stderr else ""


def _progress(case: Case, c: int, series: str, row: dict[str, Any]) -> None:
    if "throughput" in row:
        q = row["latency_ms"]
        msg = f"{row['throughput']:8.1f} infer/s  p50 {q['p50']:7.1f}  p99 {q['p99']:7.1f} ms"
    else:
        msg = "error: " + row.get("error", "?").splitlines()[-1][:100]
    print(f"{case.label:<14} c={c:<2} {series:<12} {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="gRPC HOST:PORT of a running server")
    parser.add_argument("--http-url", default=None, help="its HTTP HOST:PORT (HOST:8000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--protocols", nargs="+", choices=("grpc", "http"), default=["grpc", "http"]
    )
    parser.add_argument(
        "--cases", nargs="+", choices=[c.label for c in CASES], default=[c.label for c in CASES]
    )
    parser.add_argument("--images", type=int, default=40, help="gallery images used (40)")
    parser.add_argument("--measurement-interval", type=int, default=3000, help="ms (3000)")
    parser.add_argument("--stability-percentage", type=float, default=50.0, help="(50)")
    parser.add_argument("--max-trials", type=int, default=6, help="windows per run (6)")
    parser.add_argument("--run-timeout", type=float, default=180.0, help="s per run (180)")
    parser.add_argument("--perf-analyzer", type=Path, default=PERF_ANALYZER)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 2, short")
    parser.add_argument("--out", type=Path, default=Path("perf/results/triton"))
    parser.add_argument("--replot", type=Path, help="only redraw PNG and README from a JSON")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.replot.with_suffix(".png"))
        if not result["settings"]["quick"]:
            (args.replot.parent / "README.md").write_text(readme(result, NOTES))
        print(table(result))
        return
    if args.quick:
        args.concurrency = [1, 2]
        args.images = min(args.images, 8)
        args.measurement_interval = 1000
        args.max_trials = 4
    args.concurrency = sorted(set(args.concurrency))
    if not (args.perf_analyzer / "bin" / "perf_analyzer").is_file():
        parser.error(f"no perf_analyzer under {args.perf_analyzer}; run scripts/install_triton.sh")

    folder = Path(tempfile.mkdtemp(prefix="facerec-triton-perf-"))
    try:
        result = run_all(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    stem = "triton_perf_quick" if args.quick else "triton_perf"
    write_json(args.out / f"{stem}.json", result)
    plot(result, args.out / f"{stem}.png")
    if not args.quick:
        (args.out / "README.md").write_text(readme(result, NOTES))
    print(table(result))
    print("\n".join(findings(result)))
    print(f"wrote {args.out / stem}.json and .png in {result['runtime_seconds']} s")


if __name__ == "__main__":
    main()
