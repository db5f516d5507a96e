"""Real-time video: tracking and identity quality on the synthetic ground-truth video,
throughput of one and many streams, CPU per stream, memory over a soak, local vs Triton.

    python -m perf.video --out perf/results [--soak-seconds 600] [--quick]

What runs (each part can be picked with ``--parts``):

- ``single``: the synthetic scene (4 people, crossing, a pillar; ``devkit/scenes.py``)
  rendered at 640x480 and 1280x720, 25 frames/s, as an MPEG-4 file, read as fast as
  possible (no frame dropped) by ``facerec.video`` exactly as ``facerec watch`` does, with
  detection on every frame and every 3rd frame: processed frames/s, frame-to-result
  latency, CPU, and the tracking figures (MOTA, IDF1, ID switches, identity accuracy per
  frame) against the ground truth.
- ``realtime``: the same files paced at 25 frames/s like a camera (frames dropped when
  behind): time from a face becoming half visible to the first result naming it right,
  wall time included.
- ``multi``: 1, 2, 4, 8 concurrent 640x480 streams, one thread each, sharing one pipeline
  and micro-batcher: aggregate processed frames/s and CPU per stream.
- ``soak``: one 640x480 stream from the test RTSP server (RTP/JPEG over TCP, 25 frames/s,
  the scene looping) for ``--soak-seconds``: resident memory sampled every 5 s.
- ``triton``: ``single`` and ``multi`` (4 streams) again with the networks on a spawned
  tritonserver (CPU repository), when ``scripts/install_triton.sh`` has installed it.
- ``ws``: the gateway's ``WS /v1/stream`` on a spawned ``facerec serve``: 1 and then 4
  clients, each a camera sending the 640x480 scene's frames as JPEG in real time (a frame
  is skipped when one is still in flight), detection on every frame and every 3rd:
  send-to-result latency p50/p95/p99, processed frames/s, drops, the service's CPU per
  frame, time to the right name and the tracking figures (``perf/video_ws.py``).

Machine load is recorded beside every timing (the 1-minute load average before and after,
and the cores other processes kept busy during the run): on a shared machine the timings
move with it; counts and accuracy do not.
Writes ``video.json``, ``video.png`` and ``video.md`` (the table docs/video.md shows) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devkit import scenes as vs
from devkit.media import RtspServer
from facerec.batching import MicroBatcher
from facerec.detection.mtcnn import MTCNNConfig
from facerec.enrolment import open_gallery
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.video import (
    GalleryPolicy,
    MatchPolicy,
    SourceOptions,
    StreamAnalyzer,
    VideoConfig,
    VideoStream,
    open_source,
)
from perf.common import figure, load, machine, percentiles, record, write_json
from perf.triton_perf import watch_load
from perf.video_ws import part_ws, plot_ws, table_ws

ROOT = Path(__file__).resolve().parents[1]

FPS = 25.0
SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


@dataclass
class Context:
    folder: Path
    scenes: dict[str, vs.Scene]
    videos: dict[str, Path]
    gallery: Path
    duration: float
    quick: bool


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def measured(row: dict[str, Any]) -> Iterator[None]:
    """Wall time; CPU time of this process and its children (tritonserver included); the
    cores other processes on the machine kept busy meanwhile, and the load average."""
    row["load_before"] = load()
    wall = time.perf_counter()
    with watch_load(row):
        yield
    row["wall_s"] = round(time.perf_counter() - wall, 2)
    row["cpu_s"] = round(row["our_processes_cores"] * row["wall_s"], 2)
    row["load_after"] = load()


def policy_for(pipeline: FacePipeline, gallery: Path) -> MatchPolicy:
    enrolled = open_gallery(pipeline, gallery)  # the default operating point (FPIR 1e-3)
    return GalleryPolicy(enrolled.gallery, enrolled.point)


def run_stream(
    batcher: MicroBatcher,
    policy: MatchPolicy | None,
    uri: str,
    config: VideoConfig,
    options: SourceOptions,
    max_frames: int | None = None,
    seconds: float | None = None,
    on_frame: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """One stream through ``facerec.video`` as ``facerec watch`` runs it."""
    source = open_source(uri, options)
    stream = VideoStream(source, StreamAnalyzer(batcher, policy, config), max_frames)
    runs: dict[int, list[vs.HypFace]] = {}
    ready: dict[int, float] = {}
    latency: list[float] = []
    start = time.monotonic()
    try:
        for frame, result in stream:
            now = time.monotonic()
            latency.append(now - frame.received)
            runs[frame.index] = [vs.HypFace(f.track_id, f.box, f.match) for f in result.faces]
            ready[frame.index] = now - start
            if on_frame is not None:
                on_frame(now - start)
            if seconds is not None and now - start >= seconds:
                break
    finally:
        stream.finish()
        source.close()
    return {
        "frames": len(runs),
        "dropped": source.stats.dropped,
        "latency_ms": percentiles(latency, digits=1),
        "embedded_crops": stream.analyzer.embedded,
        "_runs": runs,
        "_ready": ready,
    }


def score(scene: vs.Scene, run: dict[str, Any], wall: bool) -> dict[str, Any]:
    s = vs.evaluate(scene, run["_runs"], run["_ready"] if wall else None)
    keys = ("mota", "idf1", "id_switches", "identity_accuracy", "identity_recall")
    out = {k: round(s[k], 4) if isinstance(s[k], float) else s[k] for k in keys}
    out["wrong_names"] = s["wrong_names"]
    out["time_to_name_s"] = s["time_to_name"]
    out["never_named"] = s["never_named"]
    out["false_negatives"] = s["false_negatives"]
    out["false_positives"] = s["false_positives"]
    out["missed_visible"] = s["missed_visible"]
    out["tracks_per_person"] = {p: len(ids) for p, ids in s["tracks_per_person"].items()}
    return out


def pipelines(backend: str, url: str | None = None) -> dict[str, FacePipeline]:
    """The default pipeline, and the faster video setting (smallest face 40 px)."""

    def make(config: PipelineConfig) -> FacePipeline:
        return FacePipeline.open(config, backend=backend, url=url)

    out = {"default": make(PipelineConfig())}
    if backend == "local":
        out["min-face 40"] = make(PipelineConfig(detector=MTCNNConfig(min_face_size=40)))
    return out


def part_single(ctx: Context, pipes: dict[str, FacePipeline], realtime: bool) -> list[Any]:
    rows = []
    for size, video in ctx.videos.items():
        for pipe_name, pipe in pipes.items():
            policy = policy_for(pipe, ctx.gallery)
            for every in (1, 3):
                if pipe_name != "default" and (size != "640x480" or every == 1):
                    continue  # the faster setting: one row, where the goal is
                batcher = MicroBatcher(pipe)
                row: dict[str, Any] = {
                    "size": size,
                    "every": every,
                    "pipeline": pipe_name,
                    "realtime": realtime,
                }
                with measured(row):
                    run = run_stream(
                        batcher,
                        policy,
                        str(video),
                        VideoConfig(detect_every=every),
                        SourceOptions(realtime=realtime),
                    )
                batcher.close()
                row.update({k: v for k, v in run.items() if not k.startswith("_")})
                row["fps"] = round(run["frames"] / row["wall_s"], 2)
                row["cpu_cores"] = round(row["cpu_s"] / row["wall_s"], 2)
                row["cpu_ms_per_frame"] = round(1000 * row["cpu_s"] / max(run["frames"], 1), 1)
                row["tracking"] = score(ctx.scenes[size], run, wall=realtime)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def part_multi(
    ctx: Context, pipe: FacePipeline, counts: list[int], every_values: tuple[int, ...]
) -> list[Any]:
    policy = policy_for(pipe, ctx.gallery)
    frames = 40 if ctx.quick else 100
    rows = []
    for every in every_values:
        for n in counts:
            batcher = MicroBatcher(pipe)
            results: list[dict[str, Any]] = [{} for _ in range(n)]

            def one(
                k: int, batcher: MicroBatcher = batcher, res: Any = results, every: int = every
            ) -> None:
                res[k] = run_stream(
                    batcher,
                    policy,
                    str(ctx.videos["640x480"]),
                    VideoConfig(detect_every=every),
                    SourceOptions(),
                    max_frames=frames,
                )

            row: dict[str, Any] = {"streams": n, "every": every, "frames_per_stream": frames}
            threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
            with measured(row):
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            total = sum(r["frames"] for r in results)
            row["aggregate_fps"] = round(total / row["wall_s"], 2)
            row["cpu_cores_per_stream"] = round(row["cpu_s"] / row["wall_s"] / n, 2)
            row["cpu_ms_per_frame"] = round(1000 * row["cpu_s"] / max(total, 1), 1)
            row["latency_ms_p95_worst"] = max(r["latency_ms"]["p95"] for r in results)
            row["frames_per_detector_call"] = round(
                batcher.images / max(batcher.calls["detect"], 1), 2
            )
            row["crops_per_embedder_call"] = round(
                batcher.crops / max(batcher.calls["embed"], 1), 2
            )
            row["pipeline_calls"] = dict(batcher.calls)
            batcher.close()
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def part_soak(ctx: Context, seconds: float) -> dict[str, Any]:
    """The stream runs in a child process (only the pipeline and the stream in it, so its
    memory is the stream's), fed by the RTSP server in this one."""
    row: dict[str, Any] = {"seconds": seconds, "source": "rtsp (test server, 25 fps)"}
    with RtspServer(ctx.scenes["640x480"].frames, FPS) as server, measured(row):
        cmd = [sys.executable, "-m", "perf.video", "--soak-child", server.url,
               str(ctx.gallery), str(seconds)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    row.update(json.loads(done.stdout.splitlines()[-1]))
    samples = row["rss_mb"]
    warm = [rss for t, rss in samples if t >= min(60.0, seconds / 5)] or [samples[-1][1]]
    row["rss_after_warmup_mb"] = warm[0]
    row["rss_end_mb"] = samples[-1][1]
    row["rss_growth"] = round((samples[-1][1] - warm[0]) / warm[0], 4)
    print(json.dumps({k: v for k, v in row.items() if k != "rss_mb"}), flush=True)
    return row


def soak_child(url: str, gallery: Path, seconds: float) -> None:
    pipe = FacePipeline.local()
    batcher = MicroBatcher(pipe)
    samples: list[tuple[float, float]] = [(0.0, round(rss_mb(), 1))]

    def sample(t: float) -> None:
        if t - samples[-1][0] >= 5.0:
            samples.append((round(t, 1), round(rss_mb(), 1)))

    start = time.perf_counter()
    run = run_stream(
        batcher,
        policy_for(pipe, gallery),
        url,
        VideoConfig(detect_every=3),
        SourceOptions(),
        seconds=seconds,
        on_frame=sample,
    )
    wall = time.perf_counter() - start
    batcher.close()
    out = {
        "frames": run["frames"],
        "dropped": run["dropped"],
        "fps": round(run["frames"] / wall, 2),
        "latency_ms": run["latency_ms"],
        "rss_mb": samples,
    }
    print(json.dumps(out))


@contextmanager
def triton_url(folder: Path) -> Iterator[str | None]:
    from devkit.servers import free_port
    from facerec.triton.repository import write_repository
    from facerec.triton.server import TritonServer, triton_home

    if not (triton_home() / "bin" / "tritonserver").is_file():
        yield None
        return
    repository = folder / "repository"
    write_repository("cpu", repository)
    with (
        (folder / "triton.log").open("wb") as log,
        TritonServer(repository, free_port(), free_port(), free_port(), log=log) as server,
    ):
        yield server.grpc_url


SECTIONS = ("single", "realtime", "multi", "soak", "triton", "ws")


def prepare(folder: Path, quick: bool) -> Context:
    probe = FacePipeline.local()
    boxes = {n: probe.detect([f])[0].boxes[0].tolist() for n, f in vs.cast_faces().items()}
    duration = 6.0 if quick else 10.0
    scenes, videos = {}, {}
    for name, (w, h) in SIZES.items():
        scenes[name] = vs.render(boxes, w, h, FPS, duration)
        videos[name] = vs.write_video(folder / f"scene-{name}.mp4", scenes[name].frames, FPS)
    return Context(folder, scenes, videos, vs.write_gallery(folder / "gallery"), duration, quick)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    result = record(
        machine=machine(load_at_start=load()),
        scene={"fps": FPS, "sizes": list(SIZES), "people": [n for n, _, _ in vs.CAST]},
        command=" ".join(["python -m perf.video", *sys.argv[1:]]),
    )
    with tempfile.TemporaryDirectory(prefix="facerec-video-") as tmp:
        ctx = prepare(Path(tmp), args.quick)
        result["scene"]["seconds"] = ctx.duration
        local = pipelines("local")
        counts = [1, 2, 4] if args.quick else [1, 2, 4, 8]
        if "single" in args.parts:
            result["single"] = part_single(ctx, local, realtime=False)
        if "realtime" in args.parts:
            result["realtime"] = part_single(ctx, {"default": local["default"]}, realtime=True)
        if "multi" in args.parts:
            result["multi"] = part_multi(ctx, local["default"], counts, (1, 3))
        if "soak" in args.parts:
            result["soak"] = part_soak(ctx, args.soak_seconds)
        if "triton" in args.parts:
            with triton_url(ctx.folder) as url:
                if url is None:
                    result["triton"] = {"skipped": "tritonserver is not installed"}
                else:
                    remote = pipelines("triton", url)
                    only = Context(**{**ctx.__dict__, "videos": {"640x480": ctx.videos["640x480"]}})
                    result["triton"] = {
                        "single": part_single(only, remote, realtime=False),
                        "multi": part_multi(ctx, remote["default"], [4], (3,)),
                    }
        if "ws" in args.parts:
            result["ws"] = part_ws(ctx, measured)
    result["machine"]["load_at_end"] = load()
    return result


# -------------------------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> None:
    with figure(path, 1, 4, figsize=(20, 4.2), dpi=110) as (fig, axes):
        single = result.get("single", [])
        if single:
            labels = [f"{r['size']}\nevery {r['every']}\n{r['pipeline']}" for r in single]
            x = np.arange(len(single))
            axes[0].bar(x - 0.2, [r["fps"] for r in single], 0.4, color="#4477aa", label="measured")
            axes[0].bar(
                x + 0.2,
                [1000 / r["cpu_ms_per_frame"] for r in single],
                0.4,
                color="#88ccee",
                label="per CPU-second used",
            )
            axes[0].set_xticks(x, labels, fontsize=7)
            axes[0].axhline(25, color="#cc3311", ls="--", lw=1, label="goal 25 fps (640x480)")
            axes[0].set_ylabel("processed frames/s")
            axes[0].set_title("one stream, read as fast as possible")
            axes[0].legend(fontsize=8)
        for every, color in ((1, "#4477aa"), (3, "#ee7733")):
            rows = [r for r in result.get("multi", []) if r["every"] == every]
            if rows:
                n = [r["streams"] for r in rows]
                axes[1].plot(
                    n, [r["aggregate_fps"] for r in rows], "o-", color=color, label=f"every {every}"
                )
                axes[1].plot(
                    n,
                    [1000 / r["cpu_ms_per_frame"] for r in rows],
                    "o--",
                    color=color,
                    alpha=0.5,
                    label=f"every {every}, per CPU-second used",
                )
        axes[1].axhline(40, color="#cc3311", ls="--", lw=1, label="goal 40 fps at 4 streams")
        axes[1].set_xlabel("concurrent 640x480 streams")
        axes[1].set_ylabel("aggregate processed frames/s")
        axes[1].set_title("streams sharing one pipeline")
        axes[1].legend(fontsize=8)
        soak = result.get("soak")
        if soak:
            t, rss = zip(*soak["rss_mb"], strict=True)
            axes[2].plot(np.array(t) / 60, rss, color="#228833")
            axes[2].set_xlabel("minutes")
            axes[2].set_ylabel("resident memory, MB")
            axes[2].set_title(f"soak: RSS growth after warm-up {100 * soak['rss_growth']:.1f} %")
        if result.get("ws", {}).get("rows"):
            plot_ws(axes[3], result["ws"])
        fig.suptitle(
            f"facerec video on {result['machine']['cpu_count']} shared cores: measured, and frames "
            "per second of CPU the process got"
        )


def _ttn(rows: list[dict[str, Any]]) -> list[float]:
    return [v for r in rows for v in r["tracking"]["time_to_name_s"].values()]


def table(result: dict[str, Any]) -> str:
    remote = result.get("triton", {})
    lines = []
    if result.get("single", []) + remote.get("single", []):
        lines += [
            "| stream | detect every | pipeline | processed fps | CPU ms per frame | MOTA | IDF1 | "
            "ID switches | identity accuracy | time to name, max | other load, cores |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in result.get("single", []) + remote.get("single", []):
        t = r["tracking"]
        backend = " (Triton)" if r in remote.get("single", []) else ""
        ttn = max(t["time_to_name_s"].values(), default=float("nan"))
        lines.append(
            f"| {r['size']} | {r['every']} | {r['pipeline']}{backend} | {r['fps']} | "
            f"{r['cpu_ms_per_frame']} | {t['mota']:.3f} | {t['idf1']:.3f} | "
            f"{t['id_switches']} | {100 * t['identity_accuracy']:.1f} % | {1000 * ttn:.0f} ms | "
            f"{r['other_processes_cores']} |"
        )
    rt = result.get("realtime", [])
    if rt:
        lines += [
            "",
            "| real time (25 fps) | detect every | processed fps | dropped | latency p50 / p95 "
            "ms | time to name, max | ID switches | other load, cores |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rt:
            t = r["tracking"]
            ttn = max(t["time_to_name_s"].values(), default=float("nan"))
            lines.append(
                f"| {r['size']} | {r['every']} | {r['fps']} | {r['dropped']} | "
                f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} | "
                f"{1000 * ttn:.0f} ms | {t['id_switches']} | {r['other_processes_cores']} |"
            )
        ttn_all = _ttn(rt)
        lines += [
            "",
            f"Time to the right name in real time, {len(ttn_all)} appearances: "
            f"p50 {1000 * float(np.percentile(ttn_all, 50)):.0f} ms, "
            f"p95 {1000 * float(np.percentile(ttn_all, 95)):.0f} ms.",
        ]
    multi = result.get("multi", []) + remote.get("multi", [])
    if multi:
        lines += [
            "",
            "| streams | detect every | aggregate fps | CPU ms per frame | cores we got | "
            "worst p95 latency ms | frames per detector call | crops per embedder call | "
            "other load, cores |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in multi:
            tag = " (Triton)" if r in remote.get("multi", []) else ""
            lines.append(
                f"| {r['streams']}{tag} | {r['every']} | {r['aggregate_fps']} | "
                f"{r['cpu_ms_per_frame']} | {r['our_processes_cores']} | "
                f"{r['latency_ms_p95_worst']:.0f} | "
                f"{r['frames_per_detector_call']} | {r['crops_per_embedder_call']} | "
                f"{r['other_processes_cores']} |"
            )
    soak = result.get("soak")
    if soak:
        lines += [
            "",
            f"Soak {soak['seconds']:.0f} s (RTSP, 640x480, detect every 3): RSS "
            f"{soak['rss_after_warmup_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB after warm-up "
            f"({100 * soak['rss_growth']:+.1f} %), {soak['fps']} fps, "
            f"{soak['dropped']} frames dropped.",
        ]
    if result.get("ws", {}).get("rows"):
        lines += ([""] if lines else []) + table_ws(result["ws"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="(600: the goal's)")
    parser.add_argument("--parts", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--quick", action="store_true", help="shorter scene, fewer streams")
    parser.add_argument(
        "--keep", action="store_true", help="keep the parts not run from --out's video.json"
    )
    parser.add_argument("--soak-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.soak_child:
        url, gallery, seconds = args.soak_child
        soak_child(url, Path(gallery), float(seconds))
        return
    if args.out is None:
        parser.error("--out is required")
    result = run_all(args)
    previous = args.out / "video.json"
    if args.keep and previous.is_file():  # parts not run this time stay as they were
        kept = json.loads(previous.read_text())
        for part in SECTIONS:
            if part not in args.parts and part in kept:
                result[part] = kept[part]
        result["kept_from_before"] = [p for p in SECTIONS if p not in args.parts and p in kept]
    write_json(args.out / "video.json", result)
    plot(result, args.out / "video.png")
    text = table(result)
    (args.out / "video.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
