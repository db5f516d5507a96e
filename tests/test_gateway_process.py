"""The real service process (``facerec serve``): killed with SIGKILL in the middle of
enrolments, then restarted; and a bounded concurrent load of enrolments with duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import GALLERY
from gateway.bootstrap import open_audit, open_index, open_store
from gateway.settings import Settings
from servers import free_port

pytestmark = pytest.mark.integration
IMAGES = sorted(GALLERY.glob("*.jpg"))


@dataclass
class Service:
    url: str
    key: str
    proc: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=60)


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env.update(FACEREC_ENV="development", FACEREC_DATA_DIR=str(data), FACEREC_INDEX_TYPE="FLAT")
    if "FACEREC_HOME" in os.environ:
        env["FACEREC_HOME"] = os.environ["FACEREC_HOME"]
    return env


def start(data: Path) -> Service:
    port = free_port()
    facerec = Path(sys.executable).with_name("facerec")
    proc = subprocess.Popen(
        [str(facerec), "serve", "--port", str(port)],
        env=_env(data),
        cwd=data.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Service(url, (data / "admin.key").read_text().strip(), proc)
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the service did not become ready")


def stop(service: Service) -> None:
    service.proc.send_signal(signal.SIGINT)
    try:
        service.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def check_consistent(data: Path) -> tuple[set[str], int]:
    """With the service stopped: no pending face, the index holds exactly the faces of the
    record, and the audit chain verifies. Returns the face ids and the audit length."""
    settings = Settings(env="development", data_dir=data)
    store = open_store(settings)
    assert store.pending_faces() == []
    index = open_index(settings, store, 128)
    try:
        faces = store.face_ids()
        assert index.current.ids() == faces
        assert store.indexed_face_ids() == faces
        report = open_audit(settings, store).verify()
        assert report.ok, report
        return faces, report.events
    finally:
        index.close()


def test_kill_during_enrolment_leaves_no_orphans(data: Path) -> None:
    service = start(data)
    acknowledged: set[str] = set()
    with service.client() as c:
        subjects = [c.post("/v1/subjects", json={"name": f"p{i}"}).json()["id"] for i in range(4)]
    stop_flag = threading.Event()

    def enrol(worker: int) -> None:
        with service.client() as c:
            for k, path in enumerate(IMAGES[worker::4]):
                if stop_flag.is_set():
                    return
                try:
                    r = c.post(
                        f"/v1/subjects/{subjects[worker]}/faces",
                        data={"face": "primary"},
                        files={"images": (path.name, path.read_bytes(), "image/jpeg")},
                    )
                except httpx.TransportError:
                    return  # the server died under this request
                if r.status_code == 200:
                    acknowledged.update(x["face_id"] for x in r.json()["results"] if x["face_id"])
                if worker == 0 and k == 3:
                    os.kill(service.proc.pid, signal.SIGKILL)  # mid-stream, others in flight
                    stop_flag.set()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(enrol, range(4)))
    service.proc.wait(timeout=10)
    assert service.proc.returncode == -signal.SIGKILL
    assert acknowledged

    service = start(data)  # start-up repairs whatever the kill left half-done
    try:
        with service.client() as c:
            listed = {
                f["id"] for s in subjects for f in c.get(f"/v1/subjects/{s}").json()["face_list"]
            }
            assert acknowledged <= listed  # no acknowledged enrolment lost
            probe = IMAGES[0]
            r = c.post("/v1/identify", files={"image": (probe.name, probe.read_bytes())})
            assert r.status_code == 200
    finally:
        stop(service)
    faces, _ = check_consistent(data)
    assert faces == listed


def test_concurrent_enrolments_with_duplicates(data: Path) -> None:
    service = start(data)
    images = IMAGES[:12]
    try:
        with service.client() as c:
            sid = c.post("/v1/subjects", json={"name": "crowd"}).json()["id"]

        def enrol(path: Path) -> tuple[str, int, str | None]:
            with service.client() as c:
                r = c.post(
                    f"/v1/subjects/{sid}/faces",
                    data={"face": "primary"},
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
    finally:
        stop(service)
    faces, _ = check_consistent(data)
    assert len(faces) == len(images)
