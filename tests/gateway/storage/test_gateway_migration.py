"""An existing deployment keeps working after the upgrade to namespaces, bootstrap-key
rotation, replayable idempotency keys and templates that record their model: a database
with the earlier schema gains the new columns (SQLite and PostgreSQL; its templates are
the published model's), and a Milvus collection without the namespace field is rebuilt
from the encrypted record by the start-up repair (Milvus Lite and a server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    select,
)

from devkit.servers import MilvusTarget
from gateway.crypto.envelope import Keyring, MasterKey, new_data_key, seal_template
from gateway.crypto.vector_protection import VectorProtector
from gateway.gallery import Gallery
from gateway.index.manager import IndexManager
from gateway.model_ids import published_model_id
from gateway.storage.database import Database
from gateway.storage.migrate import migrate
from gateway.storage.schema import ApiKeyRow, Base, FaceRow, SubjectRow
from gateway.storage.secrets import SecretRepository


def earlier_schema() -> MetaData:
    """The tables that changed, as the previous release created them."""
    meta = MetaData()
    when = DateTime(timezone=True)
    Table(
        "subjects",
        meta,
        Column("id", String(64), primary_key=True),
        Column("name", String(256)),
        Column("meta", JSON),
        Column("created_at", when),
        Column("expires_at", when, nullable=True),
        Column("dek_key_id", String(64)),
        Column("dek_blob", LargeBinary),
    )
    Table(
        "faces",
        meta,
        Column("id", String(64), primary_key=True),
        Column("subject_id", ForeignKey("subjects.id", ondelete="CASCADE")),
        Column("template", LargeBinary),
        Column("content_hash", String(64)),
        Column("quality", Float),
        Column("box", JSON),
        Column("state", String(16)),
        Column("image", LargeBinary, nullable=True),
        Column("created_at", when),
        UniqueConstraint("subject_id", "content_hash"),
    )
    Table(
        "api_keys",
        meta,
        Column("id", String(32), primary_key=True),
        Column("role", String(16)),
        Column("digest", String(64)),
        Column("label", String(256)),
        Column("created_at", when),
        Column("revoked_at", when, nullable=True),
    )
    Table(
        "requests",
        meta,
        Column("key", String(160), primary_key=True),
        Column("created_at", when),
    )
    Table(
        "system_keys",
        meta,
        Column("name", String(64), primary_key=True),
        Column("key_id", String(64)),
        Column("blob", LargeBinary),
        Column("updated_at", when),
    )
    Table("audit_events", meta, Column("seq", Integer, primary_key=True), Column("body", String))
    Table(
        "jobs",
        meta,
        Column("id", String(64), primary_key=True),
        Column("kind", String(32)),
        Column("key_id", String(32), nullable=True),
        Column("status", String(16)),
        Column("total", Integer),
        Column("done", Integer),
        Column("params", JSON),
        Column("results", JSON),
        Column("error", JSON, nullable=True),
        Column("created_at", when),
        Column("finished_at", when, nullable=True),
    )
    return meta


def test_upgrade_keeps_an_existing_deployment(storage: dict[str, Any], tmp_path: Path) -> None:
    url = storage.get("database_url") or f"sqlite:///{tmp_path / 'facerec.sqlite3'}"
    uri = storage.get("milvus_uri") or str(tmp_path / "index.db")
    milvus = MilvusTarget(uri, {k: v for k, v in storage.items() if k.startswith("milvus_")})
    keyring = Keyring(MasterKey.generate())
    engine = create_engine(url)
    old = earlier_schema()
    old.create_all(engine)

    # data as the earlier release wrote it
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal(128).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    sid, fid, t = "a" * 32, "b" * 32, datetime.now(UTC)
    dek = new_data_key()
    wrapped = keyring.wrap(dek, sid)
    with engine.begin() as conn:
        conn.execute(
            old.tables["subjects"].insert(),
            [
                dict(
                    id=sid,
                    name="Old",
                    meta={},
                    created_at=t,
                    dek_key_id=wrapped.key_id,
                    dek_blob=wrapped.blob,
                )
            ],
        )
        conn.execute(
            old.tables["faces"].insert(),
            [
                dict(
                    id=fid,
                    subject_id=sid,
                    template=seal_template(dek, embedding, sid, fid),
                    content_hash="h",
                    quality=0.9,
                    box=[0, 0, 1, 1],
                    state="indexed",
                    created_at=t,
                )
            ],
        )
        conn.execute(
            old.tables["api_keys"].insert(),
            [
                dict(id="boot", role="admin", digest="d", label="bootstrap", created_at=t),
                dict(id="ops", role="enrol", digest="d", label="ops", created_at=t),
            ],
        )
        conn.execute(old.tables["requests"].insert(), [dict(key="ops:create-1", created_at=t)])
        job = dict(kind="identify", key_id="ops", total=2, params={}, created_at=t)
        conn.execute(
            old.tables["jobs"].insert(),
            [
                dict(job, id="running", status="running", done=1, results=[{"image": "a"}]),
                dict(job, id="finished", status="done", done=2, results=[{}, {}]),
            ],
        )
    secret = SecretRepository(engine, keyring).get_or_create("index")
    engine.dispose()
    protector = VectorProtector(MasterKey.from_bytes(secret), 128)
    collection = f"faces_{protector.key_id.replace('-', '_')}"
    client = MilvusClient(uri, **milvus.options().client_kwargs())
    schema = client.create_schema(auto_id=False)
    schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("subject_id", DataType.VARCHAR, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=128)
    params = client.prepare_index_params()
    params.add_index("vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection(collection, schema=schema, index_params=params)
    client.insert(
        collection,
        [
            {
                "face_id": fid,
                "subject_id": sid,
                "vector": protector.protect(embedding[None])[0].tolist(),
            }
        ],
    )
    client.close()

    # the new release starts on it
    db = Database(url, keyring)
    with db.engine.connect() as conn:
        row = conn.execute(select(SubjectRow.namespace, SubjectRow.gallery)).one()
        assert tuple(row) == ("default", "default")
        boot = dict(conn.execute(select(ApiKeyRow.id, ApiKeyRow.bootstrap)).all())
        assert boot == {"boot": True, "ops": False}
        # templates from before faces recorded their model: the published model's
        assert conn.execute(select(FaceRow.model_id)).scalar_one() == published_model_id()
    assert db.subjects.get(sid).scope == ("default", "default")
    # a job the earlier release was running kept its inputs in that process: it ended
    interrupted = db.jobs.get("running")
    assert interrupted.status == "failed" and interrupted.error is not None
    assert interrupted.error["code"] == "interrupted" and interrupted.results == [{"image": "a"}]
    assert db.jobs.get("finished").status == "done" and db.jobs.active() == []
    held = db.idempotency.claim("ops:create-1", "f", timedelta(minutes=10))
    assert held is not None and held.fingerprint is None  # a key used before: still refused
    index = IndexManager(db.secrets, uri, 128, "FLAT", milvus.options())
    gallery = Gallery(db, index)
    try:
        fields = {f["name"] for f in index.current.client.describe_collection(collection)["fields"]}
        assert {"namespace", "gallery"} <= fields
        repaired = gallery.reconcile()
        assert (repaired.rolled_back, repaired.restored, repaired.orphans) == (0, 1, 0)
        (hit,) = index.search(embedding[None], 5, namespace="default")[0]
        assert hit.face_id == fid and hit.similarity > 0.9999
        assert index.search(embedding[None], 5, namespace="acme") == [[]]
        assert gallery.reconcile().changed is False
        assert migrate(db.engine, Base.metadata) == []  # nothing left to do
    finally:
        gallery.close()
