"""Speed of the in-process pipeline against a PyTorch-eager reference, in one run.

The reference runs the same converted weights the way facenet-pytorch does: MTCNN
(``training.mtcnn_reference.EagerMTCNN``) then Inception-ResNet-v1, eagerly, one image at
a time, on the same cores. Both sides decode JPEG bytes, detect, crop and embed every face
found; start-up (model loading, first call) is excluded.

    python -m perf.speed --lfw ../shared/datasets/lfw --out perf/results

(``--models facenet128+dlib128`` times another model the default's way too, beside it)
writes ``speed.json`` and ``speed.png`` and prints the ratios. These machines' speed
drifts by tens of per cent over minutes, so every configuration (the reference included)
runs once per round, the rounds interleaved, and the totals are compared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import torch

from facerec.alignment import crop_box
from facerec.batch import ProcessBatchRunner
from facerec.embedding import per_image_standardization
from facerec.imaging.decode import decode_image
from facerec.imaging.pad import pad_edges
from facerec.models import facerec_home, load_model_card, model_path
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.runtime import default_threads
from perf.common import figure, machine, record, write_json
from perf.scenes import lfw_files, scene

PAD = 50


def _pad(img: np.ndarray, pad: int) -> np.ndarray:
    return pad_edges(img, pad)


class Reference:
    """facenet-pytorch's way: eager MTCNN, box crop, eager Inception-ResNet-v1."""

    def __init__(self) -> None:
        from export.mtcnn_weights import load_mtcnn
        from training.facenet_keras import load_facenet_keras
        from training.mtcnn_reference import EagerMTCNN

        w = facerec_home() / "weights"
        self.mtcnn = EagerMTCNN(*load_mtcnn(w / "pnet.pt", w / "rnet.pt", w / "onet.pt"))
        self.facenet = load_facenet_keras(w / "facenet_keras.h5").eval()
        self.margin = load_model_card().box_margin

    def __call__(self, data: bytes, pad: int, stages: dict[str, float]) -> int:
        t0 = time.perf_counter()
        img = _pad(decode_image(data), pad)
        t1 = time.perf_counter()
        boxes, _, _ = self.mtcnn.detect(img)
        t2 = time.perf_counter()
        crops = (
            np.stack([crop_box(img, b, self.margin, 160) for b in boxes]) if len(boxes) else None
        )
        t3 = time.perf_counter()
        if crops is not None:
            with torch.inference_mode():
                self.facenet(torch.from_numpy(per_image_standardization(crops)))
        t4 = time.perf_counter()
        for name, dt in zip(
            ("decode", "detect", "align", "embed"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
            strict=True,
        ):
            stages[name] += dt
        return len(boxes)


@dataclass
class Timing:
    """What one or more timed passes over a set of images did and took (seconds)."""

    images: int = 0
    faces: int = 0
    wall: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: Timing) -> Timing:
        stages = dict(self.stages)
        for k, v in other.stages.items():
            stages[k] = stages.get(k, 0.0) + v
        return Timing(
            self.images + other.images, self.faces + other.faces, self.wall + other.wall, stages
        )

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "faces": self.faces,
            "wall_seconds": round(self.wall, 4),
            "images_per_second": round(self.images / self.wall, 2),
            "faces_per_second": round(self.faces / self.wall, 2),
            "ms_per_image": round(1e3 * self.wall / self.images, 2),
            "stage_ms_per_image": {
                k: round(1e3 * v / self.images, 2) for k, v in self.stages.items()
            },
        }


def time_reference(ref: Reference, payloads: list[bytes], pad: int) -> Timing:
    stages = dict.fromkeys(("decode", "detect", "align", "embed"), 0.0)
    ref(payloads[0], pad, dict(stages))  # warm-up
    start = time.perf_counter()
    faces = sum(ref(p, pad, stages) for p in payloads)
    wall = time.perf_counter() - start
    return Timing(len(payloads), faces, wall, stages)


def time_pipeline(pipeline: FacePipeline, payloads: list[bytes], pad: int, batch: int) -> Timing:
    def run(chunk: list[bytes]) -> tuple[int, float]:
        t = time.perf_counter()
        images = [_pad(decode_image(p), pad) for p in chunk]
        decode = time.perf_counter() - t
        return sum(len(r.faces) for r in pipeline.analyze(images)), decode

    run(payloads[:batch])  # warm-up
    pipeline.timer.seconds.clear()
    decode = 0.0
    faces = 0
    start = time.perf_counter()
    for lo in range(0, len(payloads), batch):
        n, d = run(payloads[lo : lo + batch])
        faces += n
        decode += d
    wall = time.perf_counter() - start
    return Timing(len(payloads), faces, wall, {"decode": decode, **pipeline.timer.seconds})


def time_processes(config: PipelineConfig, paths: list[Path], pad: int, chunk: int) -> Timing:
    """The batch-job path: one worker process per core, each decoding its own files."""
    with ProcessBatchRunner(config) as runner:
        runner.warm_up()
        list(runner.run(paths[:chunk], pad=pad, chunk=chunk))  # first call of each model
        runner.seconds.clear()
        start = time.perf_counter()
        faces = sum(len(r.faces.faces) for r in runner.run(paths, pad=pad, chunk=chunk) if r.faces)
        wall = time.perf_counter() - start
        return Timing(len(paths), faces, wall, dict(runner.seconds))


def embedder_throughput(batches: tuple[int, ...], crops: np.ndarray) -> dict[str, Any]:
    """Faces/s of the embedder alone: PyTorch eager FP32, ONNX Runtime FP32 and INT8."""
    from training.facenet_keras import load_facenet_keras

    card = load_model_card()
    x_all = per_image_standardization(crops)
    net = load_facenet_keras(facerec_home() / "weights" / "facenet_keras.h5").eval()
    engines: dict[str, Callable[[np.ndarray], Any]] = {}

    def eager(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return net(torch.from_numpy(x))

    engines["pytorch_eager_fp32"] = eager
    for precision in ("fp32", "int8"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = default_threads()
        sess = ort.InferenceSession(
            str(model_path(f"{card.name}-{precision}")), opts, providers=["CPUExecutionProvider"]
        )
        engines[f"onnxruntime_{precision}"] = lambda x, s=sess: s.run(None, {"image": x})
    out: dict[str, Any] = {}
    for name, fn in engines.items():
        out[name] = {}
        for b in batches:
            x = np.ascontiguousarray(np.resize(x_all, (b, *x_all.shape[1:])))
            fn(x)
            reps = max(2, 64 // b)
            t = time.perf_counter()
            for _ in range(reps):
                fn(x)
            out[name][f"batch_{b}"] = round(reps * b / (time.perf_counter() - t), 1)
    return out


def _write(folder: Path, stem: str, payloads: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(payloads):
        path = folder / f"{stem}_{i:02d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def plot(result: dict[str, Any], path: Path) -> None:
    """Top: throughput and speed-up per input set; bottom: where the time goes."""
    sets = list(result["end_to_end"])
    size = (5.5 * len(sets), 8)
    with figure(path, 2, len(sets), figsize=size, dpi=110, squeeze=False) as (_, axes):
        stages = ["decode", "detect", "align", "embed"]
        for col, name in enumerate(sets):
            runs = result["end_to_end"][name]
            labels = list(runs)
            short = [
                k.replace(" (similarity+flip, int8)", "").replace(", int8", "") for k in labels
            ]
            top, bottom = axes[0, col], axes[1, col]
            rates = [runs[k]["images_per_second"] for k in labels]
            top.bar(short, rates, color=["grey"] + ["tab:blue"] * (len(labels) - 1))
            for i, k in enumerate(labels):
                top.text(
                    i,
                    rates[i],
                    f"{rates[i]:.1f}/s\nx{runs[k]['speedup_vs_reference']:.2f}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            top.set_title(f"{name}: images per second")
            top.set_ylim(0, max(rates) * 1.25)
            base = np.zeros(len(labels))
            for stage in stages:
                vals = np.array([runs[k]["stage_ms_per_image"].get(stage, 0.0) for k in labels])
                bottom.bar(short, vals, bottom=base, label=stage)
                base += vals
            bottom.set_ylabel("thread-ms per image, by stage")
            for ax in (top, bottom):
                ax.tick_params(axis="x", labelrotation=25, labelsize=7)
        axes[1, 0].legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=Path("../shared/datasets/lfw"))
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument("--images", type=int, default=120, help="LFW images per run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved passes of every configuration"
    )
    parser.add_argument(
        "--sets", nargs="+", choices=("lfw", "vga", "hd"), default=["lfw", "vga", "hd"]
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=[],
        metavar="NAME",
        help="other models to time the same way as the default (e.g. facenet128+dlib128): "
        "their worker processes and threads runs, next to the default model's",
    )
    args = parser.parse_args()

    threads = default_threads()
    torch.set_num_threads(threads)
    files = lfw_files(args.lfw, args.images)
    scenes_dir = Path(tempfile.mkdtemp(prefix="facerec-scenes-"))
    vga = [scene(files[3 * i : 3 * i + 3], 640, 480, i) for i in range(12)]
    hd = [scene(files[6 * i : 6 * i + 6], 1920, 1080, i) for i in range(5)]
    every = {
        "lfw": ("lfw_250x250", (files, PAD)),
        "vga": ("scene_640x480_3_faces", (_write(scenes_dir, "vga", vga), 0)),
        "hd": ("scene_1920x1080_6_faces", (_write(scenes_dir, "hd", hd), 0)),
    }
    inputs = dict(every[k] for k in args.sets)
    ref = Reference()
    configs = {
        "default, threads": PipelineConfig(),
        "similarity, no flip, int8": PipelineConfig(flip=False),
        "similarity+flip, fp32": PipelineConfig(precision="fp32"),
    }
    for model in args.models:
        configs[f"{model}, threads"] = PipelineConfig(model=model)
    pipelines = {name: FacePipeline.local(cfg) for name, cfg in configs.items()}
    end_to_end: dict[str, Any] = {}
    for set_name, (paths, pad) in inputs.items():
        payloads = [p.read_bytes() for p in paths]
        chunk = max(1, min(8, len(paths) // default_threads()))
        timings: dict[str, Timing] = defaultdict(Timing)
        for _ in range(args.rounds):
            timings["reference (PyTorch eager)"] += time_reference(ref, payloads, pad)
            timings["default, worker processes"] += time_processes(
                PipelineConfig(), paths, pad, chunk
            )
            for model in args.models:
                timings[f"{model}, worker processes"] += time_processes(
                    PipelineConfig(model=model), paths, pad, chunk
                )
            for name, pipe in pipelines.items():
                timings[f"{name}, batch {args.batch}"] += time_pipeline(
                    pipe, payloads, pad, args.batch
                )
                if name.startswith("default"):
                    timings[f"{name}, batch 1"] += time_pipeline(pipe, payloads, pad, 1)
        runs = {name: t.summary() for name, t in timings.items()}
        base = runs["reference (PyTorch eager)"]["images_per_second"]
        for run in runs.values():
            run["speedup_vs_reference"] = round(run["images_per_second"] / base, 2)
        end_to_end[set_name] = runs
        print(f"\n{set_name}")
        for name, run in runs.items():
            print(
                f"  {name:45s} {run['images_per_second']:7.1f} img/s  "
                f"x{run['speedup_vs_reference']:.2f}  {run['stage_ms_per_image']}"
            )

    crops = np.stack([cv2.resize(decode_image(f.read_bytes()), (160, 160)) for f in files[:32]])
    embedder = embedder_throughput((1, 8, 32), crops)
    print("\nembedder alone (faces/s):", json.dumps(embedder, indent=1))
    result = record(
        end_to_end=end_to_end,
        embedder_faces_per_second=embedder,
        threads=threads,
        rounds=args.rounds,
        workers=pipelines["default, threads"].workers,
        notes="stage times are summed over the pipeline's worker threads, so they can add up "
        "to more than the wall time per image",
        machine=machine(torch=torch.__version__),
    )
    write_json(args.out / "speed.json", result)
    plot(result, args.out / "speed.png")
    print(f"\nwrote {args.out / 'speed.json'} and {args.out / 'speed.png'}")


if __name__ == "__main__":
    main()
