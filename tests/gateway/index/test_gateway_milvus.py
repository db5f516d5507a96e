"""The gateway on a real Milvus standalone server (2.3, authentication and TLS on): the
server killed under a running gateway, then restarted; credentials refused with a clear
error; vectors of failed calls removed before the next search; and the warning when an
embedded (Milvus Lite) gallery outgrows what it is meant for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import gateway.index.milvus
from devkit.servers import MilvusStandalone, MilvusTarget, milvus_installed, milvus_standalone
from facerec.pipeline import FacePipeline
from gateway.bootstrap import open_database, open_gallery
from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.errors import IndexUnavailableError
from gateway.index.milvus import FaceIndex, MilvusOptions
from tests.support.apiclient import one_image, running, settings_for
from tests.support.data import GALLERY

CHOI = sorted(GALLERY.glob("Choi_Sung-hong_*.jpg"))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def enrol(client: TestClient, subject: str, path: Path) -> str:
    r = client.post(f"/v1/subjects/{subject}/faces", files=one_image(path, "images"))
    assert r.status_code == 200 and r.json()["enrolled"] == 1, r.text
    face_id: str = r.json()["results"][0]["face_id"]
    return face_id


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.integration
def test_gateway_survives_milvus_going_away(tmp_path: Path, pipeline: FacePipeline) -> None:
    """Milvus killed under a running gateway: every call that needs the index is a 503
    ``index_unavailable`` (never a 500, no traceback in the log), a failed enrolment stores
    nothing, and once Milvus is back the same gateway serves again, with index and record
    in agreement."""
    if not milvus_installed():
        pytest.skip("the milvus package (Milvus standalone) is not installed")
    assert len(CHOI) >= 4
    with milvus_standalone(tmp_path / "milvus", session_ttl=8) as server:
        settings = settings_for(tmp_path / "data", {}, **server.settings())
        with running(settings, pipeline) as client:
            subject = client.post("/v1/subjects", json={"name": "Choi"}).json()["id"]
            kept, deleted = (enrol(client, subject, path) for path in CHOI[:2])
            r = client.post("/v1/identify", files=one_image(CHOI[2]))
            assert r.json()["faces"][0]["match"]["subject_id"] == subject

            server.kill()
            pymilvus_log = Records()  # pymilvus logs to its own handler, not the root's
            logging.getLogger("pymilvus").addHandler(pymilvus_log)
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["index"].startswith("error")
            for response in (
                client.post("/v1/identify", files=one_image(CHOI[2])),
                client.post(f"/v1/subjects/{subject}/faces", files=one_image(CHOI[3], "images")),
                client.delete(f"/v1/subjects/{subject}/faces/{deleted}"),
                client.delete(f"/v1/subjects/{subject}"),
            ):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "index_unavailable"
                assert "Milvus at https://127.0.0.1:" in error["message"]
                assert server.password not in response.text
            logging.getLogger("pymilvus").removeHandler(pymilvus_log)
            assert not [m for m in pymilvus_log.messages if "Traceback" in m]
            # the failed enrolment left nothing; the failed subject deletion changed nothing;
            # the face deletion is done in the record, its vector is queued for removal
            faces = client.get(f"/v1/subjects/{subject}").json()["face_list"]
            assert [f["id"] for f in faces] == [kept]

            server.start()
            # Milvus loads its collections again once the killed process's sessions expire
            deadline = time.monotonic() + 120
            r = client.post("/v1/identify", files=one_image(CHOI[2]))
            while r.status_code == 503 and time.monotonic() < deadline:
                assert r.json()["error"]["code"] == "index_unavailable"
                time.sleep(1)
                r = client.post("/v1/identify", files=one_image(CHOI[2]))
            assert r.status_code == 200, r.text
            assert r.json()["faces"][0]["match"]["subject_id"] == subject
            enrol(client, subject, CHOI[3])  # not a duplicate: the failed try left nothing
            assert client.get("/readyz").status_code == 200

        db = open_database(settings)
        store, gallery = db.faces, open_gallery(settings, db, 128)
        try:
            assert deleted not in gallery.index.current.ids()
            assert gallery.index.current.ids() == store.face_ids() == store.indexed_face_ids()
            assert len(store.face_ids()) == 2
        finally:
            gallery.close()


@pytest.mark.integration
def test_wrong_credentials_are_refused_clearly(standalone: MilvusStandalone) -> None:
    protector = VectorProtector(MasterKey.generate(), 128)
    ca = str(standalone.ca_file)
    for options, says in (
        (MilvusOptions(user=standalone.user, password="wrong", ca_file=ca), "refused the cred"),
        (MilvusOptions(ca_file=ca), "refused the credentials"),
    ):
        with pytest.raises(IndexUnavailableError) as err:
            FaceIndex(standalone.uri, protector, options=options)
        assert err.value.code == "index_unavailable" and err.value.http_status == 503
        assert says in err.value.message and "FACEREC_MILVUS_PASSWORD" in err.value.message
        assert err.value.details["reason"] == "unauthenticated"
        assert "wrong" not in err.value.message


@pytest.mark.integration
def test_cli_refuses_wrong_password_and_plaintext(
    standalone: MilvusStandalone, tmp_path: Path
) -> None:
    """A whole process with bad settings: one line naming what to fix, exit status 1."""
    facerec = Path(sys.executable).with_name("facerec")
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    base.update(
        FACEREC_HOME=os.environ.get("FACEREC_HOME", ""),
        FACEREC_ENV="development",
        FACEREC_DATA_DIR=str(tmp_path / "data"),
        FACEREC_MILVUS_USER=standalone.user,
        FACEREC_MILVUS_CA_FILE=str(standalone.ca_file),
    )
    cases = {
        "refused the credentials": {
            "FACEREC_MILVUS_URI": standalone.uri,
            "FACEREC_MILVUS_PASSWORD": "wrong",
        },
        # the server speaks TLS only: a plaintext client does not get through
        "failed to connect": {
            "FACEREC_MILVUS_URI": standalone.uri.replace("https://", "http://"),
            "FACEREC_MILVUS_PASSWORD": standalone.password,
        },
    }
    for says, env in cases.items():
        done = subprocess.run(
            [str(facerec), "reindex", "--check"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert "index_unavailable" in done.stderr and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert standalone.password not in done.stderr


def test_vectors_of_failed_calls_are_removed_first(milvus: MilvusTarget) -> None:
    """A write whose outcome is unknown (or a failed removal) is undone before the index
    answers anything else."""
    index = FaceIndex(
        milvus.uri,
        VectorProtector(MasterKey.generate(), 128),
        index_type="FLAT",
        options=milvus.options(),
    )
    try:
        gallery = unit(np.random.default_rng(3), 3)
        index.add(["a", "b", "c"], ["s", "s", "t"], gallery)
        index.forget(["b"])
        hits = index.search(gallery, top_k=3)
        assert all(h.face_id != "b" for hs in hits for h in hs)
        assert index.ids() == {"a", "c"}
    finally:
        index.drop()
        index.close()


def test_lite_warns_once_past_its_gallery_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.index.milvus, "LITE_MAX_FACES", 10)
    monkeypatch.setattr(
        gateway.index.milvus, "_lite_warned", gateway.index.milvus.threading.Event()
    )
    caplog.set_level(logging.WARNING, logger="gateway.index.milvus")
    gallery = unit(np.random.default_rng(4), 12)
    index = FaceIndex(str(tmp_path / "index.db"), VectorProtector(MasterKey.generate(), 128))
    try:
        index.add([f"f{i}" for i in range(8)], ["s"] * 8, gallery[:8])
        assert not caplog.records  # 8 faces: within what Milvus Lite is meant for
        index.add(["f8", "f9", "f10"], ["s"] * 3, gallery[8:11])
        index.add(["f11"], ["s"], gallery[11:])
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings
        assert "FACEREC_MILVUS_URI" in warnings[0] and "11 faces" in warnings[0]
    finally:
        index.close()
    # reopened past the size: warned at once (once per process)
    caplog.clear()
    monkeypatch.setattr(
        gateway.index.milvus, "_lite_warned", gateway.index.milvus.threading.Event()
    )
    index = FaceIndex(str(tmp_path / "index.db"), index.protector)
    index.close()
    assert len(caplog.records) == 1 and "12 faces" in caplog.records[0].getMessage()


def test_milvus_access_settings_are_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from gateway.bootstrap import milvus_options

    for bad, says in (
        ({"milvus_user": "facerec"}, "needs FACEREC_MILVUS_PASSWORD"),
        ({"milvus_user": "u", "milvus_password": "p", "milvus_token": "u:p"}, "not both"),
        ({"milvus_client_cert_file": tmp_path / "c.pem"}, "mutual TLS"),
    ):
        with pytest.raises(ValidationError, match=says):
            settings_for(tmp_path, {}, **bad)
    options = milvus_options(
        settings_for(
            tmp_path,
            {},
            milvus_user="facerec",
            milvus_password="s3cret",
            milvus_ca_file=tmp_path / "ca.pem",
            milvus_consistency="Strong",
        )
    )
    assert options.client_kwargs() == {
        "timeout": 10.0,
        "token": "facerec:s3cret",
        "server_pem_path": str(tmp_path / "ca.pem"),
    }
    assert options.consistency == "Strong"


def test_lite_flushes_every_thousand_new_faces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unflushed rows are searched by brute force in Milvus Lite (seconds per search at
    tens of thousands): the index flushes them into sealed segments as the gallery grows.
    (The real client's flush, counted.)"""
    monkeypatch.setattr(gateway.index.milvus, "LITE_FLUSH_ROWS", 10)
    index = FaceIndex(str(tmp_path / "index.db"), VectorProtector(MasterKey.generate(), 128))
    flushed: list[str] = []
    real_flush = index.client.flush

    def counted(collection: str, **kwargs: Any) -> None:
        flushed.append(collection)
        real_flush(collection, **kwargs)

    monkeypatch.setattr(index.client, "flush", counted)
    gallery = unit(np.random.default_rng(5), 25)
    try:
        for lo in range(0, 25, 5):
            index.add([f"f{i}" for i in range(lo, lo + 5)], ["s"] * 5, gallery[lo : lo + 5])
        assert flushed == [index.collection] * 2  # at 10 and at 20 new faces
        assert index.search(gallery[24:], top_k=1)[0][0].face_id == "f24"
    finally:
        index.close()
