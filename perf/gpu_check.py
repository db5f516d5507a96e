"""GPU check: FaceNet embedder throughput on a CUDA GPU, written as JSON.

Prepared to run in one short call on a lent GPU machine (which has PyTorch with CUDA but
no TensorRT and a CPU-only onnxruntime), from a copy of this tree:

    # here: write the converted weights as an FP16 state dict (45 MB, small enough to carry)
    python -m perf.gpu_check --save-weights results/gpu/facenet128-fp16.pt
    # there:
    python3 -m perf.gpu_check --weights results/gpu/facenet128-fp16.pt --out $OUT/gpu.json

It measures PyTorch CUDA FP32 and FP16 (eager, channels-last, and replayed as a CUDA
graph) at batch 1, 8, 64 and 256 with cuDNN autotuning,
checks FP16 against FP32 (cosine), and says which engines it could not run and why.
FP32 runs the FP16-rounded weights upcast: the same speed, not the same bits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from perf.common import machine, record, write_json
from training.inception_resnet_v1 import InceptionResnetV1

BATCHES = (1, 8, 64, 256)


def save_weights(path: Path) -> None:
    from facerec.models import facerec_home
    from training.facenet_keras import load_facenet_keras

    model = load_facenet_keras(facerec_home() / "weights" / "facenet_keras.h5")
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _throughput(model: torch.nn.Module, x: torch.Tensor, seconds: float = 2.0) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            runs += 1
        torch.cuda.synchronize()
        return runs * x.shape[0] / (time.perf_counter() - start)


class _Graphed(torch.nn.Module):
    """Replays one captured CUDA graph per input shape: no per-kernel launch cost, which
    dominates eager mode at small batches (the way a serving engine runs a fixed shape)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out


def measure(weights: Path) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return record(error="no CUDA device visible to PyTorch")
    torch.backends.cudnn.benchmark = True
    state = torch.load(weights, map_location="cpu", weights_only=True)
    fp32 = InceptionResnetV1().eval()
    fp32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    fp32 = fp32.cuda()
    fp16 = InceptionResnetV1().eval().half().cuda()
    fp16.load_state_dict(state)
    fp16_cl = InceptionResnetV1().eval().half().cuda().to(memory_format=torch.channels_last)
    fp16_cl.load_state_dict(state)

    gen = torch.Generator(device="cpu").manual_seed(0)
    out: dict[str, Any] = {"faces_per_second": {}}
    for name, model, dtype, layout in (
        ("pytorch_cuda_fp32", fp32, torch.float32, torch.contiguous_format),
        ("pytorch_cuda_fp16", fp16, torch.float16, torch.contiguous_format),
        ("pytorch_cuda_fp16_channels_last", fp16_cl, torch.float16, torch.channels_last),
        (
            "pytorch_cuda_fp16_channels_last_cuda_graph",
            _Graphed(fp16_cl),
            torch.float16,
            torch.channels_last,
        ),
    ):
        out["faces_per_second"][name] = {}
        for b in BATCHES:
            x = torch.randn(b, 3, 160, 160, generator=gen).to("cuda", dtype)
            x = x.contiguous(memory_format=layout)
            rate = _throughput(model, x)
            out["faces_per_second"][name][f"batch_{b}"] = round(rate, 1)
            print(f"{name:34s} batch {b:3d}: {rate:9.1f} faces/s", flush=True)
    x = torch.randn(64, 3, 160, 160, generator=gen).cuda()
    with torch.inference_mode():
        a = fp32(x)
        b16 = fp16(x.half()).float()
    cos = (a * b16).sum(dim=1)
    out["fp16_vs_fp32_cosine_min"] = round(float(cos.min()), 6)
    out["not_run"] = {
        "onnxruntime_cuda": "this machine's onnxruntime is a CPU build",
        "tensorrt": "TensorRT is not installed on this machine",
    }
    out["machine"] = machine(
        device=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-weights", type=Path, help="write the FP16 state dict and stop")
    parser.add_argument("--weights", type=Path, default=Path("results/gpu/facenet128-fp16.pt"))
    parser.add_argument("--out", type=Path, default=Path("perf/results/gpu.json"))
    args = parser.parse_args()
    if args.save_weights:
        save_weights(args.save_weights)
        return
    result = measure(args.weights)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
