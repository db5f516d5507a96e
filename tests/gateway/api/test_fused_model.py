"""The gateway with the fused model ``facenet128+dlib128`` (``FACEREC_MODEL``, the local
backend; on Triton: tests/triton/test_triton_fused_gateway.py): enrolment, 1:1 and 1:N, with
the two-stage search (the index holds only FaceNet's slice of each template, renormalised and
protected, 128-d; the full 256-d templates are sealed in the system of record and re-rank the
index's candidates), and ``facerec reembed`` toward it from kept images. On the three storage
configurations (SQLite + Milvus Lite; PostgreSQL + Milvus Lite's server; PostgreSQL + a real
Milvus standalone)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from devkit.servers import Service
from facerec.pipeline import FacePipeline
from gateway.bootstrap import open_database, open_gallery
from gateway.settings import Settings
from gateway.storage.schema import FaceRow
from tests.gateway.api.test_gateway_models import (
    DEAN,
    KERRY,
    enrol,
    identified,
    reembed_cli,
    subject,
    verify,
)
from tests.support.apiclient import image_files, one_image, running, settings_for
from tests.support.data import FUSED


def matched(client: TestClient | httpx.Client, path: Path) -> str | None:
    r = client.post("/v1/identify", files=one_image(path))
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    return None if face["match"] is None else str(face["match"]["subject_id"])


def assert_stored(settings: Settings, fused: FacePipeline, count: int) -> None:
    """The fused model's ``count`` templates are sealed, 256-d and unit once opened; the
    index holds for each exactly the protected, renormalised FaceNet slice (128-d)."""
    db = open_database(settings)
    gallery = open_gallery(settings, db, fused.card.index_space, fused.model_id)
    try:
        opened = {f: t for f, _, t in db.faces.templates(model_id=fused.model_id)}
        assert len(opened) == count
        a = fused.card.part_weights[0]
        for t in opened.values():
            assert t.shape == (256,) and abs(float(np.linalg.norm(t)) - 1) < 1e-5
            assert abs(float(np.linalg.norm(t[:128])) - np.sqrt(a)) < 1e-4  # [√a·f, √b·d]
        with db.engine.connect() as conn:
            sealed = dict(conn.execute(select(FaceRow.id, FaceRow.template)).all())
        for face_id, t in opened.items():
            blob = bytes(sealed[face_id])
            for clear in (t, t[:128], t[128:]):  # neither part is in the clear
                assert clear.astype(np.float32).tobytes() not in blob

        index = gallery.index.current
        assert index.protector.dim == 128 and gallery.index.space.size == 128
        described = index.client.describe_collection(index.collection)
        (field,) = [f for f in described["fields"] if f["name"] == "vector"]
        assert int(field["params"]["dim"]) == 128
        rows = index.client.query(index.collection, ids=sorted(opened), output_fields=["vector"])
        assert {r["face_id"] for r in rows} == set(opened)
        for r in rows:
            t = opened[r["face_id"]]
            expected = index.protector.protect((t[:128] / np.linalg.norm(t[:128]))[None])[0]
            np.testing.assert_allclose(np.asarray(r["vector"], np.float32), expected, atol=1e-5)
    finally:
        gallery.close()


def test_the_fused_model_enrols_verifies_and_identifies(
    storage: dict[str, Any], tmp_path: Path, fused: FacePipeline
) -> None:
    settings = settings_for(tmp_path / "data", storage, model=FUSED)
    with running(settings, fused) as client:
        assert client.get("/readyz").json()["model"] == {"id": fused.model_id}
        kerry, dean = subject(client, "Kerry"), subject(client, "Dean")
        assert enrol(client, kerry, KERRY[:2])["enrolled"] == 2
        assert enrol(client, dean, DEAN[:2])["enrolled"] == 2
        same = verify(client, kerry, KERRY[3]).json()
        assert same["match"] is True and same["threshold"] == pytest.approx(
            fused.card.calibration("similarity", True, "int8").threshold, abs=1e-6
        )
        assert verify(client, kerry, DEAN[2]).json()["match"] is False
        assert verify(client, dean, KERRY[3]).json()["match"] is False
        assert matched(client, KERRY[3]) == kerry
        assert matched(client, DEAN[2]) == dean
        assert identified(client, KERRY[3])[:1] == [kerry]
    assert_stored(settings, fused, 4)


def test_reembed_moves_kept_faces_to_the_fused_model(
    storage: dict[str, Any],
    tmp_path: Path,
    pipeline: FacePipeline,
    fused: FacePipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    with running(settings_for(data, storage, store_images=True), pipeline) as client:
        kerry, dean = subject(client, "Kerry"), subject(client, "Dean")
        assert enrol(client, kerry, KERRY[:2])["enrolled"] == 2
        assert enrol(client, dean, DEAN[:1])["enrolled"] == 1
    rc, report = reembed_cli(data, {**storage, "model": FUSED}, monkeypatch, capsys)
    assert rc == 0, report
    assert report["model_id"] == fused.model_id
    assert (report["considered"], report["reembedded"], report["errors"]) == (3, 3, [])
    settings = settings_for(data, storage, store_images=True, model=FUSED)
    assert_stored(settings, fused, 3)
    with running(settings, fused) as client:
        models = client.get("/v1/models").json()
        assert (models["id"], models["templates"], models["other_model_templates"]) == (
            fused.model_id,
            3,
            0,
        )
        assert verify(client, kerry, KERRY[3]).json()["match"] is True
        assert verify(client, dean, KERRY[3]).json()["match"] is False
        assert matched(client, KERRY[3]) == kerry
        assert matched(client, DEAN[2]) == dean


def test_facerec_serve_runs_the_model_of_facerec_model(
    serve: Callable[..., Service], fused: FacePipeline
) -> None:
    """``facerec serve`` as a process, its model from ``FACEREC_MODEL`` (local backend)."""
    service = serve(FACEREC_MODEL=FUSED, FACEREC_BACKEND="local")
    with service.client() as client:
        assert client.get("/readyz").json()["model"] == {"id": fused.model_id}
        kerry = client.post("/v1/subjects", json={"name": "Kerry"}).json()["id"]
        r = client.post(f"/v1/subjects/{kerry}/faces", files=image_files(KERRY[:2]))
        assert r.status_code in (200, 201) and r.json()["enrolled"] == 2, r.text
        assert matched(client, KERRY[3]) == kerry
        assert matched(client, DEAN[2]) is None
        r = client.post("/v1/verify", data={"subject_id": kerry}, files=one_image(KERRY[3]))
        assert r.json()["match"] is True
