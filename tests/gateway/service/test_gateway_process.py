"""The real service process (``facerec serve``): killed with SIGKILL in the middle of
enrolments, then restarted; and a bounded concurrent load of enrolments with duplicates."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.bootstrap import open_audit, open_database, open_gallery
from gateway.settings import Settings
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration
IMAGES = sorted(GALLERY.glob("*.jpg"))


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def check_consistent(data: Path) -> tuple[set[str], int]:
    """With the service stopped: no pending face, the index holds exactly the faces of the
    record, and the audit chain verifies. Returns the face ids and the audit length."""
    settings = Settings(env="development", data_dir=data)
    db = open_database(settings)
    assert db.faces.pending_face_ids() == []
    gallery = open_gallery(settings, db, 128)
    try:
        faces = db.faces.face_ids()
        assert gallery.index.current.ids() == faces
        assert db.faces.indexed_face_ids() == faces
        report = open_audit(settings, db).verify()
        assert report.ok, report
        return faces, report.events
    finally:
        gallery.close()


def test_kill_during_enrolment_leaves_no_orphans(data: Path) -> None:
    with running_gateway(data) as service:  # killed below: stopping it then does nothing
        acknowledged: set[str] = set()
        with service.client() as c:
            subjects = [
                c.post("/v1/subjects", json={"name": f"p{i}"}).json()["id"] for i in range(4)
            ]
        stop_flag = threading.Event()

        def enrol(worker: int) -> None:
            with service.client() as c:
                for k, path in enumerate(IMAGES[worker::4]):
                    if stop_flag.is_set():
                        return
                    try:
                        r = c.post(
                            f"/v1/subjects/{subjects[worker]}/faces",
                            data={"face": "primary", "force": "true"},  # several people each
                            files={"images": (path.name, path.read_bytes(), "image/jpeg")},
                        )
                    except httpx.TransportError:
                        return  # the server died under this request
                    if r.status_code == 200:
                        acknowledged.update(
                            x["face_id"] for x in r.json()["results"] if x["face_id"]
                        )
                    if worker == 0 and k == 3:
                        os.kill(service.proc.pid, signal.SIGKILL)  # mid-stream, others in flight
                        stop_flag.set()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(enrol, range(4)))
        service.proc.wait(timeout=10)
        assert service.proc.returncode == -signal.SIGKILL
        assert acknowledged

    # start-up repairs whatever the kill left half-done
    with running_gateway(data) as service, service.client() as c:
        listed = {f["id"] for s in subjects for f in c.get(f"/v1/subjects/{s}").json()["face_list"]}
        assert acknowledged <= listed  # no acknowledged enrolment lost
        probe = IMAGES[0]
        r = c.post("/v1/identify", files={"image": (probe.name, probe.read_bytes())})
        assert r.status_code == 200
    faces, _ = check_consistent(data)
    assert faces == listed


def test_concurrent_enrolments_with_duplicates(data: Path) -> None:
    images = IMAGES[:12]
    with running_gateway(data) as service:
        with service.client() as c:
            sid = c.post("/v1/subjects", json={"name": "crowd"}).json()["id"]

        def enrol(path: Path) -> tuple[str, int, str | None]:
            with service.client() as c:
                r = c.post(
                    f"/v1/subjects/{sid}/faces",
                    data={"face": "primary", "force": "true"},  # three people in "crowd"
                    files={"images": (path.name, path.read_bytes(), "image/jpeg")},
                )
                code = r.json()["error"]["code"] if r.status_code != 200 else None
                return path.name, r.status_code, code

        jobs = [p for p in images for _ in range(3)]  # every image sent three times at once
        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(enrol, jobs))
        ok = [name for name, status, _ in outcomes if status == 200]
        dupes = [
            name for name, status, code in outcomes if (status, code) == (409, "duplicate_face")
        ]
        assert sorted(ok) == sorted(p.name for p in images)  # each image enrolled exactly once
        assert len(dupes) == 2 * len(images) and len(outcomes) == len(ok) + len(dupes)
        with service.client() as c:
            assert c.get(f"/v1/subjects/{sid}").json()["faces"] == len(images)
    faces, _ = check_consistent(data)
    assert len(faces) == len(images)


def test_a_restart_with_data_logs_no_traceback(data: Path, tmp_path: Path) -> None:
    """Start, enrol, stop, start again (start-up repair reads the index back): the
    service's own output holds warnings at most, never a traceback."""
    for run in range(2):
        log = tmp_path / f"service-{run}.log"
        with running_gateway(data, log=log) as service:
            if run == 0:
                with service.client() as client:
                    sid = client.post("/v1/subjects", json={"name": "x"}).json()["id"]
                    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in IMAGES[:2]]
                    assert client.post(f"/v1/subjects/{sid}/faces", files=files).status_code == 200
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and " ERROR " not in text, text[-2000:]
