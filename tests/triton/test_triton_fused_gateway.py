"""The gateway on a fused Triton repository: ``facerec serve`` with
``FACEREC_MODEL=facenet128+dlib128`` and ``FACEREC_BACKEND=triton`` enrols, verifies and
identifies through the server's two embedder branches (Triton's statistics count the
gateway's faces in the dlib branch), with the same decisions as the in-process fused
model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from facerec.imaging.decode import read_image
from facerec.pipeline import FacePipeline
from facerec.triton.client import TritonConnection
from facerec.triton.server import TritonServer
from tests.gateway.api.test_gateway_models import DEAN, KERRY
from tests.support.apiclient import image_files, one_image
from tests.support.data import FUSED
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration


def _dlib_faces(server: TritonServer) -> int:
    """Crops the dlib branch has embedded, once Triton has recorded the last request's."""
    client = TritonConnection(server.grpc_url).client()

    def count() -> int:
        stats = client.get_inference_statistics("embedder_dlib128", as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))

    seen, deadline = count(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (again := count()) == seen:
            break
        seen = again
    return seen


def test_the_gateway_runs_the_fused_model_on_triton(
    fused_server: TritonServer, fused: FacePipeline, tmp_path: Path
) -> None:
    before = _dlib_faces(fused_server)
    env = {
        "FACEREC_MODEL": FUSED,
        "FACEREC_BACKEND": "triton",
        "FACEREC_TRITON_URL": fused_server.grpc_url,
    }
    with running_gateway(tmp_path / "data", env) as service, service.client() as client:
        assert client.get("/readyz").json()["model"] == {"id": fused.model_id}
        kerry = client.post("/v1/subjects", json={"name": "Kerry"}).json()["id"]
        dean = client.post("/v1/subjects", json={"name": "Dean"}).json()["id"]
        for sid, paths in ((kerry, KERRY[:2]), (dean, DEAN[:2])):
            r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(paths))
            assert r.status_code in (200, 201) and r.json()["enrolled"] == 2, r.text

        def verify(sid: str, path: Path) -> dict[str, object]:
            r = client.post("/v1/verify", data={"subject_id": sid}, files=one_image(path))
            assert r.status_code == 200, r.text
            body: dict[str, object] = r.json()
            return body

        same = verify(kerry, KERRY[3])
        assert same["match"] is True
        assert same["threshold"] == pytest.approx(
            fused.card.calibration("similarity", True, "int8").threshold, abs=1e-6
        )
        assert verify(kerry, DEAN[2])["match"] is False
        assert verify(dean, KERRY[3])["match"] is False

        r = client.post("/v1/identify", files=one_image(KERRY[3]))
        assert r.status_code == 200, r.text
        (face,) = r.json()["faces"]
        assert face["match"]["subject_id"] == kerry

    # the in-process fused model's similarity for the same probe (the best of the
    # subject's templates): the Triton branches compute what the local ones do
    local = np.stack([_primary(fused, p) for p in (*KERRY[:2], KERRY[3])])
    assert (
        float(same["similarity"])
        == pytest.approx(  # type: ignore[arg-type]
            float(np.max(local[:2] @ local[2])), abs=0.01
        )
    )
    # 4 enrolled + 3 verified + 1 identified faces, each through the dlib branch
    assert _dlib_faces(fused_server) - before >= 8


def _primary(pipeline: FacePipeline, path: Path) -> np.ndarray:
    (face,) = pipeline.analyze([read_image(path)], primary_only=True)[0].faces
    assert face.embedding is not None
    return face.embedding
