"""Triton's `face_pipeline` ensemble over gRPC: an image in, every face and its embedding out.

    python examples/triton_client.py --url 127.0.0.1:8001
    python examples/triton_client.py        # starts `facerec triton serve` itself

The ensemble (model_repository/*/face_pipeline/config.pbtxt) takes one decoded image,
IMAGE uint8[H, W, 3] RGB, and answers BOXES float32[N, 4] (x1, y1, x2, y2), SCORES
float32[N], LANDMARKS float32[N, 5, 2] and EMBEDDINGS float32[N, 128] (unit length: a dot
product is a cosine). Two photos of Ann Veneman and one of Dean Barker are sent; each face
is printed, then the cosines of the pairs. Without --url, `facerec triton repo` writes a
CPU repository into a temp dir and `facerec triton serve` runs it on free loopback ports.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc
from PIL import Image

LFW = Path(__file__).resolve().parents[1] / "tests" / "data" / "lfw"
PHOTOS = [LFW / "Ann_Veneman_0003.jpg", LFW / "Ann_Veneman_0005.jpg", LFW / "Dean_Barker_0001.jpg"]
OUTPUTS = ["BOXES", "SCORES", "LANDMARKS", "EMBEDDINGS"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_server() -> Iterator[str]:
    """`facerec triton serve` on free ports until every model is ready; yields its gRPC URL."""
    facerec = str(Path(sys.executable).with_name("facerec"))  # the package's command
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"  # configs, and the converted models' files
        subprocess.run([facerec, "triton", "repo", "--out", str(repository)], check=True)
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        ports = ["--http-port", str(http), "--grpc-port", str(grpc_port)]
        command = [facerec, "triton", "serve", "--repository", str(repository), *ports]
        with (Path(tmp) / "triton.log").open("wb") as log:  # the server's own log
            proc = subprocess.Popen(
                [*command, "--metrics-port", str(metrics)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        try:
            assert proc.stdout is not None  # it prints one line once the models are ready
            if not proc.stdout.readline().startswith("Triton ready"):
                sys.exit(f"tritonserver did not start:\n{(Path(tmp) / 'triton.log').read_text()}")
            yield f"127.0.0.1:{grpc_port}"
        finally:
            proc.terminate()  # SIGTERM: Triton unloads the models and exits
            proc.wait(timeout=60)


def faces(client: grpc.InferenceServerClient, photo: Path) -> np.ndarray:
    """Send one photo's pixels; print its faces; return their embeddings float32[N, 128]."""
    image = np.asarray(Image.open(photo).convert("RGB"))  # uint8[H, W, 3], RGB
    tensor = grpc.InferInput("IMAGE", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    wanted = [grpc.InferRequestedOutput(name) for name in OUTPUTS]
    result = client.infer("face_pipeline", [tensor], outputs=wanted)
    boxes, scores, _, embeddings = (result.as_numpy(name) for name in OUTPUTS)
    print(f"{photo.name}: {len(boxes)} face(s)")
    for box, score, embedding in zip(boxes, scores, embeddings, strict=True):
        print(
            f"  box {np.round(box).astype(int).tolist()} score {score:.4f} "
            f"embedding norm {np.linalg.norm(embedding):.4f}"
        )
    return np.asarray(embeddings)


def run(url: str) -> int:
    client = grpc.InferenceServerClient(url)
    if not client.is_model_ready("face_pipeline"):
        print(f"{url}: the face_pipeline model is not ready")
        return 1
    a, b, other = (faces(client, photo)[0] for photo in PHOTOS)  # one face in each
    print(f"cosine {PHOTOS[0].stem} / {PHOTOS[1].stem}: {float(a @ b):.3f} (same person)")
    print(f"cosine {PHOTOS[0].stem} / {PHOTOS[2].stem}: {float(a @ other):.3f} (two people)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="host:port of Triton's gRPC endpoint (default: start one)")
    args = parser.parse_args(argv)
    if args.url:
        return run(args.url)
    with start_server() as url:
        return run(url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
