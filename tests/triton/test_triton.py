"""The real tritonserver on CPU with the generated repository: the ensemble and the Triton
backend against the in-process pipeline, over gRPC and HTTP; dynamic batching; errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from devkit import servers
from facerec.pipeline import FacePipeline, ImageFaces
from facerec.triton.client import TritonConnection
from facerec.triton.server import TritonServer, TritonUnavailableError
from tests.support.data import GALLERY

pytestmark = pytest.mark.integration

COSINE_MIN = 0.9999


@pytest.fixture(scope="module")
def expected(local_pipeline: FacePipeline, images: list[np.ndarray]) -> list[ImageFaces]:
    return local_pipeline.analyze(images)


def _agree(
    boxes: np.ndarray, scores: np.ndarray, marks: np.ndarray, emb: np.ndarray, ref: ImageFaces
) -> None:
    assert len(boxes) == len(ref.faces)
    if not ref.faces:
        assert emb.shape == (0, 128)
        return
    np.testing.assert_allclose(boxes, np.stack([f.box for f in ref.faces]), atol=1e-3)
    np.testing.assert_allclose(scores, [f.score for f in ref.faces], atol=1e-5)
    np.testing.assert_allclose(marks, np.stack([f.landmarks for f in ref.faces]), atol=1e-3)
    want = np.stack([f.embedding for f in ref.faces if f.embedding is not None])
    assert (emb * want).sum(axis=1).min() >= COSINE_MIN
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def _ensemble_agrees(
    connection: TritonConnection, images: list[np.ndarray], expected: list[ImageFaces]
) -> None:
    for image, ref in zip(images, expected, strict=True):
        outs = connection.infer(
            "face_pipeline", {"IMAGE": image}, ("BOXES", "SCORES", "LANDMARKS", "EMBEDDINGS")
        )
        _agree(*outs, ref)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_gives_the_in_process_faces(
    triton_server: TritonServer,
    images: list[np.ndarray],
    expected: list[ImageFaces],
    protocol: str,
) -> None:
    assert [len(e.faces) for e in expected] == [1, 1, 2, 3, 0]
    _ensemble_agrees(TritonConnection(triton_server.url(protocol), protocol), images, expected)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_backend_pipeline_matches_local(
    triton_server: TritonServer,
    local_pipeline: FacePipeline,
    images: list[np.ndarray],
    expected: list[ImageFaces],
    protocol: str,
) -> None:
    url = triton_server.url(protocol)
    remote = FacePipeline.open(backend="triton", url=url, protocol=protocol)
    assert remote.config.precision == local_pipeline.config.precision
    assert remote.threshold == local_pipeline.threshold
    for got, ref in zip(remote.analyze(images), expected, strict=True):
        assert got.detected == ref.detected
        _agree(
            np.array([f.box for f in got.faces]).reshape(-1, 4),
            np.array([f.score for f in got.faces]),
            np.array([f.landmarks for f in got.faces]).reshape(-1, 5, 2),
            np.array([f.embedding for f in got.faces]).reshape(-1, 128),
            ref,
        )


def _embedder_counts(connection: TritonConnection) -> tuple[int, int]:
    stats = connection.client().get_inference_statistics("embedder", as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def _settled_counts(connection: TritonConnection) -> tuple[int, int]:
    """The embedder's counts once earlier tests' requests are all recorded: Triton records
    statistics just after it answers, which lags on a loaded machine."""
    counts = _embedder_counts(connection)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (again := _embedder_counts(connection)) == counts:
            break
        counts = again
    return counts


def test_concurrent_requests_are_batched(triton_server: TritonServer) -> None:
    connection = TritonConnection(triton_server.grpc_url)
    crops = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    inferences0, executions0 = _settled_counts(connection)
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            start.wait()
            for _ in range(4):
                connection.infer("embedder", {"CROPS": crops}, ("EMBEDDINGS",))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sent = 16 * 4 * 2  # Triton counts inferences per batch element (crop)
    deadline = time.monotonic() + 10  # statistics are recorded just after the responses
    while (counts := _embedder_counts(connection))[0] - inferences0 < sent:
        assert time.monotonic() < deadline, "statistics never caught up"
        time.sleep(0.1)
    inferences, executions = counts
    assert inferences - inferences0 == sent
    assert 0 < executions - executions0 < 16 * 4  # fewer runs than requests


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(TritonUnavailableError) as err:
        FacePipeline.open(backend="triton", url=f"127.0.0.1:{servers.free_port()}")
    assert err.value.code == "triton_unavailable"


def test_bad_input_is_refused_by_the_server(triton_server: TritonServer) -> None:
    from facerec.triton.client import TritonInferenceError

    connection = TritonConnection(triton_server.grpc_url)
    with pytest.raises(TritonInferenceError):
        wrong_size = np.zeros((1, 100, 100, 3), np.uint8)
        connection.infer("embedder", {"CROPS": wrong_size}, ("EMBEDDINGS",))


def test_serve_command_starts_and_stops_cleanly(tmp_path: Path) -> None:
    if not servers.triton_installed():
        pytest.skip("tritonserver is not installed")
    ports = [str(servers.free_port()) for _ in range(3)]
    facerec = Path(sys.executable).with_name("facerec")
    flags = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    proc = subprocess.Popen(
        [str(facerec), "triton", "serve", "--json", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        ready = json.loads("".join(lines))
        assert ready["grpc"] == f"127.0.0.1:{ports[1]}"
        connection = TritonConnection(ready["grpc"])
        assert connection.model_config("face_pipeline")["platform"] == "ensemble"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(TritonUnavailableError):
            connection.model_config("face_pipeline")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_gateway_reports_triton_going_away(tmp_path: Path) -> None:
    """A gateway on Triton: ready while Triton is, then 503s with a code (never a 500)
    once it is gone, and no face is stored for a failed enrolment."""
    if not servers.triton_installed():
        pytest.skip("tritonserver is not installed")
    from tests.support.apiclient import one_image, running, settings_for

    image = GALLERY / "Choi_Sung-hong_0001.jpg"
    with servers.triton_server(tmp_path / "triton") as server:
        remote = FacePipeline.open(backend="triton", url=server.grpc_url)
        settings = settings_for(tmp_path / "data", {})
        with running(settings, remote) as client:
            assert client.get("/readyz").status_code == 200
            subject = client.post("/v1/subjects", json={"name": "Choi"}).json()["id"]
            server.stop()
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["models"].startswith("error")
            r = client.post("/v1/detect", files=one_image(image))
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "triton_unavailable"
            r = client.post(f"/v1/subjects/{subject}/faces", files=one_image(image, "images"))
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "triton_unavailable"
            assert client.get(f"/v1/subjects/{subject}").json()["faces"] == 0


def test_ensemble_without_flip_matches_in_process_without_flip(
    tmp_path: Path, images: list[np.ndarray]
) -> None:
    """The repository's aligner with ``flip: false``: the ensemble gives the in-process
    pipeline's embeddings without flip averaging (fuse passes the rows through)."""
    if not servers.triton_installed():
        pytest.skip("tritonserver is not installed")
    from facerec.pipeline import PipelineConfig

    def flip_off(repository: Path) -> None:
        aligner = repository / "aligner" / "config.pbtxt"
        text = aligner.read_text()
        flip_on = 'key: "flip" value { string_value: "true" }'
        assert flip_on in text
        aligner.write_text(text.replace(flip_on, 'key: "flip" value { string_value: "false" }'))

    expected = FacePipeline.local(PipelineConfig(flip=False)).analyze(images)
    with servers.triton_server(tmp_path, adjust=flip_off) as server:
        _ensemble_agrees(TritonConnection(server.grpc_url), images, expected)
