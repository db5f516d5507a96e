"""A real scaled-out deployment on loopback: three API replicas (``facerec serve
--no-workers``) and two workers (``facerec worker``), each with a data directory of its
own as on separate machines, over one PostgreSQL and one Milvus 2.3 standalone server,
behind HAProxy with the deployment's own configuration (deploy/haproxy.cfg).

Clients work through the load balancer at once; a worker is killed with SIGKILL in the
middle of a job and in the middle of a stream; every replica is restarted in turn under
load, then every process at the same moment; PostgreSQL is restarted under load. Then the
audit chain, the index and the job queue are checked. The tests run in file order and
share the deployment (module scope)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devkit import servers
from devkit.media import RtspServer
from devkit.servers import LoadBalancer, Postgres, Service, wait_for
from tests.support.apiclient import image_files, zip_of
from tests.support.data import GALLERY, LFW

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API = ["api0", "api1", "api2"]
JOB_LEASE_S = 4.0
STREAM_LEASE_S = 3.0
PEOPLE = ["Ben_Affleck", "Choi_Sung-hong", "Cruz_Bustamante", "Dennis_Hastert"]
PEOPLE += ["Howard_Dean", "Jeremy_Greenstock", "John_Kerry", "Xanana_Gusmao"]


def photos(person: str) -> list[Path]:
    return sorted(GALLERY.glob(f"{person}_*.jpg"))


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str]
    pg: Postgres
    engine: Engine
    ports: dict[str, int]
    lb: LoadBalancer
    apis: dict[str, Service] = field(default_factory=dict)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.env["FACEREC_ADMIN_KEY"]

    def data(self, name: str) -> Path:
        return self.tmp / name / "data"

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start_api(self, name: str) -> None:
        self.data(name).mkdir(parents=True, exist_ok=True)
        self.apis[name] = servers.start_gateway(
            self.data(name),
            self.env,
            log=self.log(name),
            port=self.ports[name],
            args=("--no-workers",),
        )

    def start_worker(self, name: str) -> None:
        self.data(name).mkdir(parents=True, exist_ok=True)
        self.workers[name] = servers.start_worker(self.data(name), self.env, self.log(name))

    def stop(self, name: str, sig: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        proc = self.apis[name].proc if name in self.apis else self.workers[name]
        proc.send_signal(sig)
        return proc

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.lb.url, headers={"X-API-Key": self.key}, timeout=timeout)

    def direct(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports[name]}",
            headers={"X-API-Key": self.key},
            timeout=60,
        )

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def pid_of(self, owner: str) -> str | None:
        """The worker (by name) whose process the lease owner ``host/pid/run`` is."""
        pid = int(owner.split("/")[1])
        return next((n for n, p in self.workers.items() if p.pid == pid), None)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, milvus_standalone: servers.MilvusStandalone
) -> Iterator[Deployment]:
    if not servers.haproxy_installed():
        pytest.skip("haproxy is not installed (scripts/install_services.sh installs it)")
    if servers.postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs them)")
    tmp = tmp_path_factory.mktemp("scale")
    with servers.postgres_instance(tmp / "pg") as pg:
        env = {
            "FACEREC_DATABASE_URL": pg.url,
            **servers.storage_env(milvus_standalone.settings()),
            "FACEREC_MASTER_KEY": secrets.token_hex(32),
            "FACEREC_ADMIN_KEY": f"frk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}",
            "FACEREC_TRUSTED_PROXIES": "127.0.0.1",
            "FACEREC_JOB_LEASE_S": str(JOB_LEASE_S),
            "FACEREC_JOB_SLICE_S": "3",
            "FACEREC_STREAM_LEASE_S": str(STREAM_LEASE_S),
            "FACEREC_DRAIN_S": "2.5",
            "FACEREC_STREAM_ALLOWED_HOSTS": "127.0.0.1",
            "FACEREC_MAX_STREAMS": "4",
            "FACEREC_MAX_JOBS_QUEUED_PER_KEY": "8",
        }
        ports = {name: servers.free_port() for name in API}
        backends = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        engine = create_engine(pg.url, pool_pre_ping=True)
        with servers.load_balancer(backends, tmp / "lb") as lb:
            d = Deployment(tmp, env, pg, engine, ports, lb)
            try:
                d.start_api("api0")  # the first creates the schema and the bootstrap key
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(d.start_api, API[1:]))
                    list(pool.map(d.start_worker, ["worker0", "worker1"]))
                lb.wait_up()
                yield d
            finally:
                for proc in [*(s.proc for s in d.apis.values()), *d.workers.values()]:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
                for proc in [*(s.proc for s in d.apis.values()), *d.workers.values()]:
                    try:
                        proc.wait(timeout=40)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                engine.dispose()
                milvus_standalone.drop_collections()


def enrol(client: httpx.Client, person: str, paths: list[Path]) -> str:
    r = client.post("/v1/subjects", json={"name": person})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(paths), data={"face": "primary"})
    assert r.status_code == 200, r.text
    assert any(x["error"] is None for x in r.json()["results"]), r.text
    return sid


def best_match(body: dict[str, Any]) -> str | None:
    faces = body["faces"]
    face = max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
    match = face["match"]
    return None if match is None else str(match["subject_id"])


# -- many clients at once -------------------------------------------------------------------
def test_clients_enrol_identify_verify_and_delete_through_the_load_balancer(
    deployment: Deployment,
) -> None:
    d = deployment
    before = {n: int(r["stot"]) for n, r in d.lb.servers().items()}

    def one_person(person: str) -> str:
        pics = photos(person)
        with d.client() as c:
            sid = enrol(c, person, pics[:2])
            r = c.post("/v1/identify", files=image_files(pics[3:4], "image"))
            assert r.status_code == 200 and best_match(r.json()) == sid, r.text
            r = c.post(
                "/v1/verify", files=image_files(pics[4:5], "image"), data={"subject_id": sid}
            )
            assert r.status_code == 200 and r.json()["match"] is True, r.text
            if person in PEOPLE[:2]:  # some are deleted again
                assert c.delete(f"/v1/subjects/{sid}").status_code == 204
                r = c.post("/v1/identify", files=image_files(pics[3:4], "image"))
                assert best_match(r.json()) is None, r.text
            return sid

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_person, PEOPLE))
    served = {n: int(r["stot"]) - before[n] for n, r in d.lb.servers().items()}
    assert all(served[n] > 0 for n in API), served  # every replica took part

    # a face enrolled through one replica is found through another at once
    strangers = sorted(LFW.glob("*.jpg"))[:4]
    for k, path in enumerate(strangers):
        with d.direct(API[k % 3]) as a, d.direct(API[(k + 1) % 3]) as b:
            sid = enrol(a, f"cross {k}", [path])
            r = b.post("/v1/identify", files=image_files([path], "image"))
            assert r.status_code == 200 and best_match(r.json()) == sid, (k, r.text)
            assert a.delete(f"/v1/subjects/{sid}").status_code == 204


def test_an_idempotency_key_holds_across_replicas(deployment: Deployment) -> None:
    d = deployment
    key = uuid.uuid4().hex
    name = f"idempotent {key[:8]}"

    def create(replica: str) -> httpx.Response:
        with d.direct(replica) as c:
            return c.post("/v1/subjects", json={"name": name}, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(create, API))
    codes = Counter(r.status_code for r in answers)
    assert codes[201] >= 1 and set(codes) <= {201, 409}, [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "request_in_progress"
    created = {r.json()["id"] for r in answers if r.status_code == 201}
    assert len(created) == 1  # a replay answers with the same subject
    with d.direct("api2") as c:
        again = c.post("/v1/subjects", json={"name": name}, headers={"Idempotency-Key": key})
        assert again.status_code == 201 and again.json()["id"] in created
        listed = c.get("/v1/subjects", params={"limit": 500}).json()["items"]
    assert [s["name"] for s in listed].count(name) == 1


def test_failed_authentications_are_limited_at_the_load_balancer(deployment: Deployment) -> None:
    d = deployment
    codes = []
    attacker = httpx.HTTPTransport(local_address="127.0.0.7")  # a client address of its own
    bad_key = {"X-API-Key": "frk_x_" + "y" * 20}
    with httpx.Client(base_url=d.lb.url, headers=bad_key, transport=attacker) as c:
        for _ in range(25):
            codes.append(c.get("/v1/subjects").status_code)
        refused = c.get("/v1/subjects")
    assert codes[:20] == [401] * 20 and codes[-1] == 429, codes
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) > 0
    with d.client() as c:  # other clients are served
        assert c.get("/v1/subjects").status_code == 200


# -- jobs ---------------------------------------------------------------------------------
def job_row(d: Deployment, job_id: str) -> Any:
    rows = d.sql("SELECT status, owner, done, total, claims FROM jobs WHERE id = :i", i=job_id)
    return rows[0]


def submit_job(d: Deployment, images: int) -> str:
    """A job of ``images`` images (a multiple of the 40 gallery photos)."""
    pics = [p for person in PEOPLE for p in photos(person)]
    assert images % len(pics) == 0
    body = zip_of(pics, repeat=images // len(pics))
    with d.client() as c:
        r = c.post("/v1/jobs", files={"files": ("in.zip", body, "application/zip")})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def test_a_worker_killed_in_the_middle_of_a_job(deployment: Deployment) -> None:
    d = deployment
    job_id = submit_job(d, 80)
    running = wait_for(
        lambda: (row := job_row(d, job_id)).done >= 8 and row.owner and row,
        120,
        "the job to be under way",
    )
    victim = d.pid_of(running.owner)
    assert victim is not None, running.owner
    d.workers[victim].kill()  # SIGKILL: no clean-up at all
    killed_at = time.monotonic()
    d.workers[victim].wait()
    taken = wait_for(
        lambda: (row := job_row(d, job_id)).owner and d.pid_of(row.owner) != victim and row,
        JOB_LEASE_S + 10,
        "another worker to take the job over",
    )
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= JOB_LEASE_S + 5, takeover_s
    assert taken.claims >= 2
    d.start_worker(victim)
    done = wait_for(lambda: (row := job_row(d, job_id)).status == "done" and row, 300, "the job")
    assert done.done == done.total == 80
    counts = d.sql(
        "SELECT count(*), count(DISTINCT idx) FROM job_results WHERE job_id = :i", i=job_id
    )[0]
    assert tuple(counts) == (80, 80)  # every image's result, exactly once
    with d.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "done" and len(job["results"]) == 80
    names = [r["image"] for r in job["results"]]
    assert len(names) == len(set(names)) == 80
    assert d.sql("SELECT count(*) FROM job_inputs WHERE job_id = :i", i=job_id)[0][0] == 0


def test_a_job_cancelled_while_it_runs(deployment: Deployment) -> None:
    d = deployment
    job_id = submit_job(d, 80)
    wait_for(lambda: job_row(d, job_id).done >= 8, 120, "the job to be under way")
    with d.client() as c:
        r = c.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        done_then = r.json()["done"]
        time.sleep(4)  # a worker holding it notices at its next chunk or heartbeat
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["done"] <= done_then + 8
    assert job_row(d, job_id).owner is None
    assert d.sql("SELECT count(*) FROM job_inputs WHERE job_id = :i", i=job_id)[0][0] == 0
    with httpx.Client(base_url=d.lb.url, timeout=30) as c:  # another key sees nothing
        r = c.post("/v1/keys", json={"role": "identify"}, headers={"X-API-Key": d.key})
        other = r.json()["token"]
        r = c.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": other})
        assert r.status_code == 404
        r = c.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": other})
        assert r.status_code == 404


# -- streams ------------------------------------------------------------------------------
class Follower(threading.Thread):
    """A stream's events over WebSockets through the load balancer, reconnecting with
    ``?after=`` whenever the connection is cut (a replica restarting)."""

    def __init__(self, d: Deployment, stream_id: str) -> None:
        super().__init__(daemon=True)
        self.d, self.stream_id = d, stream_id
        self.items: list[dict[str, Any]] = []
        self.reconnects = 0
        self.closes: list[tuple[int | None, str]] = []
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        url = self.d.lb.url.replace("http://", "ws://")
        while not self.stop.is_set():
            after = self.items[-1]["seq"] if self.items else 0
            path = f"{url}/v1/streams/{self.stream_id}/events?after={after}"
            try:
                with connect(path, additional_headers={"X-API-Key": self.d.key}) as ws:
                    while not self.stop.is_set():
                        try:
                            self.items.append(json.loads(ws.recv(timeout=1)))
                        except TimeoutError:
                            continue
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                self.closes.append((code, exc.rcvd.reason if exc.rcvd else ""))
                if code == 1000:
                    return
            except (OSError, Exception):  # refused while the replica restarts: try again
                pass
            self.reconnects += 1
            time.sleep(0.3)

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.items if "seq" in e]


def scene_frames() -> list[np.ndarray]:
    from facerec.imaging.decode import read_image

    frames = []
    for path in photos("John_Kerry")[:3]:
        face = read_image(path)
        canvas = np.full((360, 480, 3), 100, np.uint8)
        canvas[100:250, 160:310] = face
        frames += [canvas] * 5
    return frames


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspServer]:
    server = RtspServer(scene_frames(), 10)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stream(deployment: Deployment, camera: RtspServer) -> dict[str, Any]:
    with deployment.client() as c:
        r = c.post("/v1/streams", json={"source": camera.url, "label": "door"})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def stream_status(d: Deployment, stream_id: str) -> dict[str, Any]:
    with d.client() as c:
        status: dict[str, Any] = c.get(f"/v1/streams/{stream_id}").json()
        return status


def test_a_worker_killed_in_the_middle_of_a_stream(
    deployment: Deployment, stream: dict[str, Any]
) -> None:
    d = deployment
    sid = stream["id"]
    follower = Follower(d, sid)
    first = wait_for(
        lambda: (s := stream_status(d, sid))["state"] == "streaming" and s["processed"] > 5 and s,
        60,
        "the stream to run",
        every=0.3,
    )
    with d.client() as c:  # any replica lists it, with its owner
        for name in API:
            with d.direct(name) as direct:
                listed = direct.get("/v1/streams").json()["items"]
                assert [s["owner"] for s in listed if s["id"] == sid] == [first["owner"]]
        assert c.get("/v1/streams").status_code == 200
    victim = d.pid_of(first["owner"])
    assert victim is not None
    wait_for(lambda: len(follower.items) >= 2, 60, "events", every=0.3)
    d.workers[victim].kill()
    killed_at = time.monotonic()
    count = len(follower.items)
    d.workers[victim].wait()
    back = wait_for(
        lambda: (
            (s := stream_status(d, sid))["owner"]
            and s["owner"] != first["owner"]
            and s["state"] == "streaming"
            and s
        ),
        30,
        "another worker to run the stream",
        every=0.2,
    )
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= 10, takeover_s
    assert back["claims"] == first["claims"] + 1
    wait_for(lambda: len(follower.items) > count, 60, "events after the take-over", every=0.3)
    assert any(e.get("state") == "streaming" for e in follower.items[count:])
    seqs = follower.seqs()
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # numbered on, nothing twice
    follower.stop.set()
    follower.join(timeout=10)
    d.start_worker(victim)


# -- restarts -----------------------------------------------------------------------------
@dataclass
class Load:
    """Identify requests through the load balancer from a few threads, and what they got."""

    d: Deployment
    threads: int = 3
    codes: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        image = photos("John_Kerry")[4]
        self._threads = [
            threading.Thread(target=self._run, args=(image,), daemon=True)
            for _ in range(self.threads)
        ]
        for t in self._threads:
            t.start()
        return self

    def _run(self, image: Path) -> None:
        with self.d.client(timeout=120) as c:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    r = c.post("/v1/identify", files=image_files([image], "image"))
                    self.codes[r.status_code] += 1
                    if r.status_code >= 500:
                        self.errors.append(r.text[:300])
                except httpx.TransportError as exc:
                    self.errors.append(repr(exc))
                self.latencies.append(time.monotonic() - start)

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=120)


def test_a_rolling_restart_under_load_gives_no_5xx(
    deployment: Deployment, stream: dict[str, Any]
) -> None:
    d = deployment
    follower = Follower(d, stream["id"])
    with Load(d) as load:
        time.sleep(2)
        for name in API:
            proc = d.stop(name, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, d.log(name).read_text()[-3000:]
            d.start_api(name)
            d.lb.wait_up([name])
        time.sleep(2)
    follower.stop.set()
    follower.join(timeout=10)
    assert load.errors == [] and all(code < 500 for code in load.codes), (load.codes, load.errors)
    assert load.codes[200] > 10
    seqs = follower.seqs()
    assert seqs and seqs == list(range(1, len(seqs) + 1)), seqs
    assert all(code in (1012, 1001) for code, _ in follower.closes), follower.closes


def test_every_process_restarted_at_once(deployment: Deployment, stream: dict[str, Any]) -> None:
    d = deployment
    runs = d.sql("SELECT runs FROM maintenance WHERE name = 'repair'")[0][0]
    before = stream_status(d, stream["id"])
    names = [*API, *d.workers]
    procs = [d.stop(n, signal.SIGTERM) for n in names]
    for name, proc in zip(names, procs, strict=True):
        assert proc.wait(timeout=60) == 0, d.log(name).read_text()[-3000:]
    pids = {str(p.pid) for p in procs}
    listed = [r[0] for r in d.sql("SELECT name FROM processes")]
    assert not [n for n in listed if n.split("/")[1] in pids], listed  # each left the list
    with ThreadPoolExecutor(len(names)) as pool:
        starts = [pool.submit(d.start_api, n) for n in API]
        starts += [pool.submit(d.start_worker, n) for n in list(d.workers)]
        for s in starts:
            s.result()
    d.lb.wait_up()
    assert d.sql("SELECT runs FROM maintenance WHERE name = 'repair'")[0][0] == runs + 1
    live = d.sql("SELECT count(*) FROM processes WHERE seen_at > now() - interval '30 seconds'")
    assert live[0][0] == len(names)
    back = wait_for(
        lambda: (
            (s := stream_status(d, stream["id"]))["state"] == "streaming"
            and s["claims"] > before["claims"]
            and s
        ),
        30,
        "the stream to resume",
        every=0.3,
    )
    assert back["owner"] != before["owner"]


def test_postgres_restarted_under_load(deployment: Deployment) -> None:
    d = deployment
    job_id = submit_job(d, 40)
    wait_for(lambda: job_row(d, job_id).done >= 8, 120, "the job to be under way")
    with Load(d) as load:
        time.sleep(1)
        d.pg.restart()
        time.sleep(5)
    clear = ("database_unavailable", "service_unavailable")  # a replica's, or the LB's
    refused = [e for e in load.errors if not any(code in e for code in clear)]
    assert refused == [], refused  # a clear 503 (retry), never another error
    assert set(load.codes) <= {200, 503}, load.codes
    d.lb.wait_up(timeout=30)
    done = wait_for(lambda: (row := job_row(d, job_id)).status == "done" and row, 300, "the job")
    assert done.done == done.total == 40
    counts = d.sql(
        "SELECT count(*), count(DISTINCT idx) FROM job_results WHERE job_id = :i", i=job_id
    )[0]
    assert tuple(counts) == (40, 40)
    with d.client() as c:
        r = c.post("/v1/identify", files=image_files(photos("John_Kerry")[4:5], "image"))
        assert r.status_code == 200


# -- afterwards ---------------------------------------------------------------------------
def facerec(d: Deployment, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env.update(d.env, FACEREC_ENV="development", FACEREC_DATA_DIR=str(d.data(name)))
    if "FACEREC_HOME" in os.environ:
        env["FACEREC_HOME"] = os.environ["FACEREC_HOME"]
    command = [str(Path(sys.executable).with_name("facerec")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_the_deployment_is_consistent_afterwards(
    deployment: Deployment, stream: dict[str, Any]
) -> None:
    d = deployment
    with d.client() as c:  # through any replica: its worker stops it, then it is gone
        assert c.delete(f"/v1/streams/{stream['id']}").status_code == 204
        assert c.get("/v1/streams").json()["items"] == []
    # no job left running without a live lease
    stale = d.sql(
        "SELECT id FROM jobs WHERE status IN ('queued', 'running') "
        "AND (lease_until IS NOT NULL AND lease_until < now())"
    )
    assert stale == []
    assert d.sql("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0] == 0
    # every indexed face has its vector and every vector its face
    checked = facerec(d, "api0", "reindex", "--check", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"rolled_back": 0, "restored": 0, "orphans": 0}
    # one audit chain, intact; every replica's head agrees with it
    for name in API:
        verified = facerec(d, name, "audit", "verify", "--json")
        assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout
    last = d.sql("SELECT max(seq) FROM audit_events")[0][0]
    time.sleep(6)  # every process's witness records the head it saw
    with d.engine.begin() as conn:  # cut the last events, as someone with the database could
        conn.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": last - 3})
    for name in API:
        verified = facerec(d, name, "audit", "verify", "--json")
        report = json.loads(verified.stdout)
        assert verified.returncode == 1 and not report["ok"], verified.stdout
        assert report["reason"] in (
            f"the log ends before event {last}",
            "differs from the recorded head",
        )
