"""Templates of different models are never compared: every template records its model;
the index, 1:N, 1:1 and the consistency gate see only the running model's; a subject
enrolled only under another model is refused with 409 ``template_model_mismatch``; and
``facerec reembed`` moves faces to the running model from their kept images (a run
stopped midway leaves every face whole, and a rerun finishes). On the three storage
configurations.

The other model is the published network followed by a fixed random rotation of its
embedding space (:func:`rotated_model`): as accurate as the published model and as
incompatible with it as a separately trained one (same-person cosines across the two are
near zero), without training one here. It runs the real detector and embedder."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import update

from devkit.servers import storage_env
from facerec.cli.main import build_parser
from facerec.errors import FaceRecError
from facerec.imaging.decode import DecodeLimits
from facerec.pipeline import FacePipeline
from gateway.bootstrap import open_database, open_gallery, open_gateway
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.model_ids import collection_prefix, published_model_id
from gateway.service.reembed import embed_stored, reembed
from gateway.settings import Settings, get_settings
from gateway.storage.database import Database
from gateway.storage.model_migration import StoredFace
from gateway.storage.schema import FaceRow
from tests.support.apiclient import image_files, one_image, running, settings_for
from tests.support.data import GALLERY, lfw_path

KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))
DEAN = sorted(GALLERY.glob("Howard_Dean_*.jpg"))
HASTERT = sorted(GALLERY.glob("Dennis_Hastert_*.jpg"))


class RotatedEmbedder:
    """The published embedder's unit vectors times a fixed orthogonal matrix."""

    def __init__(self, inner: Any, seed: int = 7) -> None:
        self.inner = inner
        self.embedding_size, self.input_size = inner.embedding_size, inner.input_size
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((128, 128)))
        self.rotation = q.astype(np.float32)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        out = self.inner.embed(crops) @ self.rotation
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), np.float32)


def rotated_model(pipeline: FacePipeline) -> FacePipeline:
    card = replace(pipeline.card, name="rotated", weights_sha256="0123456789abcdef" * 4)
    return FacePipeline(
        pipeline.detector, RotatedEmbedder(pipeline.embedder), card, pipeline.config
    )


@pytest.fixture
def other(pipeline: FacePipeline) -> FacePipeline:
    return rotated_model(pipeline)


def subject(client: TestClient, name: str) -> str:
    sid: str = client.post("/v1/subjects", json={"name": name}).json()["id"]
    return sid


def enrol(client: TestClient, sid: str, paths: list[Path]) -> dict[str, Any]:
    r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(paths))
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def verify(client: TestClient, sid: str, path: Path) -> Any:
    return client.post("/v1/verify", data={"subject_id": sid}, files=one_image(path))


def identified(client: TestClient, path: Path) -> list[str]:
    r = client.post("/v1/identify", files=one_image(path))
    assert r.status_code == 200, r.text
    return [c["subject_id"] for f in r.json()["faces"] for c in f["candidates"]]


def reembed_cli(
    data: Path,
    storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, Any]:
    """``facerec reembed --json`` on the test's data and storage, through the CLI's entry
    point with its settings from the environment. In this process: a Milvus Lite file
    stays locked by the process that opened it."""
    for key in list(os.environ):
        if key.startswith("FACEREC_") and key != "FACEREC_HOME":
            monkeypatch.delenv(key)
    env = {"env": "development", "data_dir": data, "index_type": "FLAT", **storage}
    for key, value in storage_env(env).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    umask = os.umask(0o022)
    capsys.readouterr()
    try:
        parsed = build_parser().parse_args(["reembed", *args, "--json"])
        rc = parsed.run(parsed)  # as main() runs it, without main()'s process-wide SIGPIPE
    finally:
        os.umask(umask)
        get_settings.cache_clear()
    return rc, json.loads(capsys.readouterr().out)


def test_other_models_templates_are_refused_and_reembedded(
    storage: dict[str, Any],
    tmp_path: Path,
    pipeline: FacePipeline,
    other: FacePipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    kept = settings_for(data, storage, store_images=True)
    # enrolled while the other model ran: Kerry and Dean with their images kept, Hastert not
    with running(kept, other) as client:
        kerry, dean = subject(client, "Kerry"), subject(client, "Dean")
        assert enrol(client, kerry, KERRY[:2])["enrolled"] == 2
        assert enrol(client, dean, DEAN[:1])["enrolled"] == 1
        gone = subject(client, "Gone")
        (gone_face,) = [
            r["face_id"] for r in enrol(client, gone, [lfw_path("Angela_Bassett_0001")])["results"]
        ]
        assert client.get("/readyz").json()["model"] == {"id": other.model_id}
    with running(settings_for(data, storage), other) as client:
        hastert = subject(client, "Hastert")
        assert enrol(client, hastert, HASTERT[:1])["enrolled"] == 1
        assert verify(client, kerry, KERRY[3]).json()["match"] is True  # same model: fine
    published = pipeline.model_id
    assert published == published_model_id() != other.model_id

    # the published model runs now
    with running(kept, pipeline) as client:
        assert client.get("/readyz").json()["model"] == {"id": published}
        # a deletion reaches the other model's collection too
        assert client.delete(f"/v1/subjects/{gone}").status_code == 204
        models = client.get("/v1/models").json()
        assert models == {
            "id": published,
            "templates": 0,
            "other_model_templates": 4,
            "other_models": {other.model_id: 4},
        }
        faces = client.get(f"/v1/subjects/{kerry}").json()["face_list"]
        assert [f["model_id"] for f in faces] == [other.model_id] * 2
        r = verify(client, kerry, KERRY[3])
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "template_model_mismatch"
        assert other.model_id in error["message"] and published in error["message"]
        assert "facerec reembed" in error["message"]
        assert error["stored_models"] == [other.model_id]
        assert identified(client, KERRY[3]) == []  # other-model templates are not searched
        # the consistency gate compares Dean's new face with no other-model template (the
        # rotated one would score about 0 and refuse it as inconsistent)
        (added,) = enrol(client, dean, DEAN[1:2])["results"]
        assert added["face_id"] and added["measures"].get("consistency") is None
        assert identified(client, DEAN[2]) == [dean]
        assert client.get("/v1/models").json()["other_model_templates"] == 4

    db = open_database(kept)
    left_behind = open_gallery(kept, db, 128, other.model_id)
    try:
        held = left_behind.index.current.ids()
        assert gone_face not in held and len(held) == 4
    finally:
        left_behind.close()
    rc, plan = reembed_cli(data, storage, monkeypatch, capsys, "--dry-run")
    assert rc == 0 and plan["dry_run"] and plan["considered"] == 4 and plan["reembedded"] == 3
    rc, report = reembed_cli(data, storage, monkeypatch, capsys)
    assert rc == 0, report
    assert (report["considered"], report["reembedded"], report["errors"]) == (4, 3, [])
    (left,) = report["needs_reenrolment"]
    assert (left["subject_id"], left["reason"]) == (hastert, "no_stored_image")
    assert left["model_id"] == other.model_id
    rc, again = reembed_cli(data, storage, monkeypatch, capsys)  # nothing left but Hastert's
    assert rc == 0 and (again["considered"], again["reembedded"]) == (1, 0)

    with running(kept, pipeline) as client:
        assert verify(client, kerry, KERRY[3]).json()["match"] is True
        assert identified(client, KERRY[3])[:1] == [kerry]
        r = verify(client, hastert, HASTERT[2])
        assert r.json()["error"]["code"] == "template_model_mismatch"
        models = client.get("/v1/models").json()
        assert (models["templates"], models["other_model_templates"]) == (4, 1)
        events = client.get("/v1/audit", params={"last": 50}).json()["events"]
        (audited,) = [e for e in events if e["action"] == "reembed"][-1:]
        assert audited["outcome"] == "ok" and "reembedded=0" in audited["detail"]
        assert "embedding" not in json.dumps(events)
        # re-enrolling the same image moves that face to the running model (no duplicate)
        (again_face,) = enrol(client, hastert, HASTERT[:1])["results"]
        assert again_face["face_id"] == left["face_id"]
        assert verify(client, hastert, HASTERT[2]).json()["match"] is True
        assert client.get("/v1/models").json()["other_model_templates"] == 0
        r = client.post(f"/v1/subjects/{hastert}/faces", files=image_files(HASTERT[:1]))
        assert r.json()["error"]["code"] == "duplicate_face"  # now a plain duplicate


class StopError(Exception):
    """A run killed between two faces."""


def test_a_stopped_run_leaves_every_face_whole_and_a_rerun_finishes(
    storage: dict[str, Any], tmp_path: Path, pipeline: FacePipeline, other: FacePipeline
) -> None:
    data = tmp_path / "data"
    settings = settings_for(data, storage, store_images=True)
    people = {"Kerry": KERRY[:3], "Dean": DEAN[:3]}
    with running(settings, other) as client:
        for name, paths in people.items():
            enrol(client, subject(client, name), paths)
    db = open_database(settings)
    gallery = open_gallery(settings, db, 128, pipeline.model_id)
    limits = DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
    try:
        assert gallery.index.current.collection.startswith(collection_prefix(published_model_id()))
        assert collection_prefix(other.model_id) != collection_prefix(published_model_id())

        def stop_after(n: int) -> Any:
            seen: list[str] = []

            def advance(face: StoredFace, outcome: str) -> None:
                seen.append(outcome)
                if len(seen) == n:
                    raise StopError

            return advance

        with pytest.raises(StopError):
            reembed(gallery, pipeline, limits, advance=stop_after(2))
        assert_whole(settings, gallery, pipeline, other, moved=2)

        # a run that died inside a face, after its new vector was written (r1) and before
        # its row changed (r2): the start-up repair removes the vector; the face is intact
        (face, *_) = db.model_migration.faces_not_of(pipeline.model_id)
        image = db.model_migration.stored_image(face.id)
        assert image is not None
        vector = embed_stored(pipeline, image, face.box, limits)
        assert vector is not None
        gallery.index.add([face.id], [face.subject_id], vector[None, :])
        repaired = gallery.reconcile()
        assert repaired.orphans == 1
        assert_whole(settings, gallery, pipeline, other, moved=2)

        report = reembed(gallery, pipeline, limits)  # the rerun finishes
        assert (report.considered, report.reembedded, report.errors) == (4, 4, [])
        assert_whole(settings, gallery, pipeline, other, moved=6)
        assert gallery.reconcile().changed is False
    finally:
        gallery.close()


def assert_whole(
    settings: Settings, gallery: Any, pipeline: FacePipeline, other: FacePipeline, moved: int
) -> None:
    """Every face is complete under one model: its template opens and is the embedding of
    its image by that model, and the index holds exactly the running model's faces."""
    faces, by_model = gallery.faces, gallery.model_migration
    counts = by_model.model_counts()
    assert counts == {
        k: v for k, v in {pipeline.model_id: moved, other.model_id: 6 - moved}.items() if v
    }
    mine = faces.indexed_face_ids(pipeline.model_id)
    assert len(mine) == moved
    assert gallery.index.current.ids() == mine
    models = {pipeline.model_id: pipeline, other.model_id: other}
    limits = DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
    for sid in {s for _, s, _ in faces.templates()}:
        for info in faces.faces(sid):
            ((_, _, template),) = [t for t in faces.templates(sid) if t[0] == info.id]
            image = by_model.stored_image(info.id)
            assert image is not None and info.model_id is not None
            expected = embed_stored(models[info.model_id], image, info.box, limits)
            assert expected is not None
            assert float(template @ expected) > 0.999, (info.model_id, info.id)


def test_the_model_setting_is_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="FACEREC_MODEL"):
        Settings(env="development", data_dir=tmp_path, model="Not A Name")
    settings = settings_for(tmp_path / "data", {}, model="no-such-model")
    with pytest.raises(FaceRecError) as refused:
        open_gateway(settings)
    assert refused.value.code == "unknown_model"
    assert not (tmp_path / "data").exists()


def test_a_face_recording_no_model_is_the_published_models(tmp_path: Path) -> None:
    """A row written without a model (by a release from before the column, during a
    rolling upgrade, after the start-up backfill) counts as the published model's."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}", Keyring(MasterKey.generate()))
    store, by_model = db.faces, db.model_migration
    sid = db.subjects.create("A").id
    vector = np.eye(128, dtype=np.float32)[0]
    old = store.add_face(sid, vector, "h1", 0.9, [0, 0, 1, 1])
    other = store.add_face(sid, vector, "h2", 0.9, [0, 0, 1, 1], model_id="rotated:0123")
    store.mark_indexed([old, other])
    with db.engine.begin() as conn:
        conn.execute(update(FaceRow).where(FaceRow.id == old).values(model_id=None))
    published = published_model_id()
    assert store.indexed_face_ids(published) == {old}
    assert [f.id for f in by_model.faces_not_of(published)] == [other]
    assert [f.id for f in by_model.faces_not_of("rotated:0123")] == [old]
    assert [f for f, _, _ in store.templates(sid, published)] == [old]
    assert by_model.model_counts() == {published: 1, "rotated:0123": 1}
    assert {f.id: f.model_id for f in store.faces(sid)} == {old: published, other: "rotated:0123"}
    # moving it needs it still to record no model
    assert by_model.replace_template(old, vector, "rotated:0123", published) == "changed"
    assert by_model.replace_template(old, vector, "rotated:0123", None) == "replaced"
