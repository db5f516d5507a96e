"""Enrolment racing a delete, on the real service (``facerec serve``) and both storage
configurations: every answer is 2xx or 404, and the deleted subject leaves nothing behind:
no row, no face, no data key, no vector (checked in SQL and in the index afterwards, with
the service stopped and before any start-up repair could hide a leak)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from devkit.servers import storage_env
from gateway.bootstrap import open_database, open_gallery
from gateway.settings import Settings
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration
IMAGES = sorted(GALLERY.glob("*.jpg"))[:32]
ROUNDS = 3


def test_enrolment_racing_a_delete_leaves_nothing(storage: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "service.log"
    deleted: list[str] = []
    statuses: list[tuple[int, str | None]] = []
    with running_gateway(data, storage_env(storage), log=log) as service:
        with service.client() as c:
            keep = c.post("/v1/subjects", json={"name": "control"}).json()["id"]
            r = c.post(
                f"/v1/subjects/{keep}/faces", files={"images": ("a.jpg", IMAGES[0].read_bytes())}
            )
            assert r.status_code == 200, r.text
        for round_ in range(ROUNDS):
            with service.client() as c:
                sid = c.post("/v1/subjects", json={"name": f"doomed {round_}"}).json()["id"]
            answered = threading.Semaphore(0)

            def enrol(path: Path, sid: str = sid, answered: threading.Semaphore = answered) -> None:
                with service.client() as c:
                    r = c.post(
                        f"/v1/subjects/{sid}/faces",
                        # 32 different people: force past the consistency gate, which
                        # would refuse all but the first (the race is what is tested here)
                        data={"face": "primary", "force": "true"},
                        files={"images": (path.name, path.read_bytes(), "image/jpeg")},
                    )
                code = r.json()["error"]["code"] if r.status_code >= 400 else None
                statuses.append((r.status_code, code))
                answered.release()

            def delete(
                sid: str = sid, answered: threading.Semaphore = answered, wait: int = 2 + 3 * round_
            ) -> None:
                # the delete goes out once some enrolments have answered, the others in flight
                for _ in range(wait):
                    answered.acquire()
                with service.client() as c:
                    r = c.delete(f"/v1/subjects/{sid}")
                assert r.status_code == 204, r.text

            with ThreadPoolExecutor(17) as pool:
                jobs = [pool.submit(enrol, p) for p in IMAGES]
                jobs.append(pool.submit(delete))
                for job in jobs:
                    job.result()
            deleted.append(sid)
            with service.client() as c:
                assert c.get(f"/v1/subjects/{sid}").status_code == 404
        assert {s for s, _ in statuses} <= {200, 404}, (statuses, log.read_text()[-5000:])
        assert all(code in (None, "not_found") for _, code in statuses), statuses
        assert any(s == 200 for s, _ in statuses) and any(s == 404 for s, _ in statuses)

    # With the service stopped, before anything repairs: nothing of the deleted subjects.
    settings = Settings(env="development", data_dir=data, **storage)
    db = open_database(settings)
    gallery = open_gallery(settings, db, 128)
    try:
        with db.engine.connect() as conn:
            for sid in deleted:
                for table, column in (("subjects", "id"), ("faces", "subject_id")):
                    count = conn.execute(
                        text(f"SELECT count(*) FROM {table} WHERE {column} = :s"), {"s": sid}
                    ).scalar_one()
                    assert count == 0, (table, sid)
        assert db.faces.pending_face_ids() == []
        index = gallery.index.current
        rows = index.client.query(
            index.collection,
            filter='face_id != ""',
            output_fields=["subject_id"],
            consistency_level="Strong",
        )
        vectors = {r["face_id"]: r["subject_id"] for r in rows}
        assert not set(deleted) & set(vectors.values()), vectors
        assert set(vectors) == db.faces.face_ids() == db.faces.indexed_face_ids()
        assert list(vectors.values()) == [keep]
    finally:
        gallery.close()
