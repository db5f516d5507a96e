"""The durable job queue on a real SQLite file and a real PostgreSQL server, several
"replicas" being several engines over one database: claims under leases, take-over after
a lease runs out with every result written once, cancellation, limits that hold across
processes, fair turns across keys and namespaces, and sealed inputs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from devkit import servers
from gateway.crypto.envelope import Keyring, MasterKey, seal_record
from gateway.errors import NotFoundError
from gateway.storage.jobs import (
    Claim,
    JobRepository,
    LeaseLostError,
    QueueFullError,
    input_context,
)
from gateway.storage.schema import open_engine

KEYRING = Keyring(MasterKey.generate())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    base = request.getfixturevalue("postgres_url")
    return servers.fresh_database(base, f"q_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def replicas(url: str) -> Iterator[list[JobRepository]]:
    """Three repositories, each with an engine of its own, over one database."""
    engines = [open_engine(url) for _ in range(3)]
    yield [JobRepository(e, KEYRING) for e in engines]
    for engine in engines:
        engine.dispose()


def submit(
    repo: JobRepository,
    images: int,
    key: str = "k1",
    namespace: str = "default",
    per_key: int = 10,
    total: int = 100,
    max_bytes: int = 10**9,
) -> str:
    data_key = bytes(32)
    job = repo.create("identify", key, namespace, {"n": images}, data_key, per_key, total, 60)
    for i in range(images):
        image = f"image {i} of {job.id}".encode() * 10
        sealed = seal_record(data_key, image, input_context(job.id, i))
        repo.add_input(job.id, i, f"{i}.jpg", len(image), sealed, max_bytes, 60)
    repo.enqueue(job.id, images)
    return job.id


def work(repo: JobRepository, claim: Claim, chunk: int, lease_s: float = 30) -> int:
    """Write the results of the next ``chunk`` images; returns how many."""
    stored = repo.next_inputs(claim.job_id, chunk, 10**9)
    repo.record(claim, [(s.idx, {"name": s.name}) for s in stored], lease_s)
    return len(stored)


def test_a_job_whose_worker_stopped_is_taken_over_and_no_result_is_written_twice(
    replicas: list[JobRepository],
) -> None:
    a, b, reader = replicas
    job_id = submit(a, 10)
    first = a.claim("worker-a", lease_s=1.0)
    assert first is not None and first.job_id == job_id
    assert b.claim("worker-b", lease_s=1.0) is None  # held: not claimable
    assert work(a, first, 4, lease_s=1.0) == 4
    time.sleep(1.3)  # worker a stops renewing: its lease runs out
    second = b.claim("worker-b", lease_s=30)
    assert second is not None and second.job_id == job_id and second.lease != first.lease
    with pytest.raises(LeaseLostError):  # a's late write is refused, nothing of it kept
        work(a, first, 3)
    assert not a.renew(first, 30)
    assert [s.idx for s in b.next_inputs(job_id, 100, 10**9)] == list(range(4, 10))
    while work(b, second, 4):
        pass
    assert b.finish(second, "done")
    job = reader.get(job_id)
    assert job.status == "done" and job.done == job.total == 10 and job.claims == 2
    assert [r["name"] for r in job.results] == [f"{i}.jpg" for i in range(10)]
    with reader.engine.connect() as conn:
        counted = conn.execute(
            text("SELECT count(*), count(DISTINCT idx) FROM job_results WHERE job_id = :i"),
            {"i": job_id},
        ).one()
    assert tuple(counted) == (10, 10)
    assert reader.next_inputs(job_id, 100, 10**9) == []  # inputs gone with the job


def test_racing_workers_claim_each_job_once(replicas: list[JobRepository]) -> None:
    jobs = {submit(replicas[0], 1, key=f"k{i}") for i in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(repo: JobRepository, name: str) -> None:
        for _ in range(20):
            claim = repo.claim(name, lease_s=60)
            if claim is not None:
                with lock:
                    claimed.append(claim.job_id)

    threads = [
        threading.Thread(target=claimer, args=(repo, f"w{i}")) for i, repo in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(jobs)  # every job once, none twice


def test_limits_hold_across_replicas_submitting_at_once(replicas: list[JobRepository]) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(repo: JobRepository, key: str) -> None:
        try:
            repo.create("identify", key, "default", {}, bytes(32), 2, 5, 60)
            outcome = "ok"
        except QueueFullError as full:
            outcome = full.which
        with lock:
            outcomes.append(outcome)

    threads = [
        threading.Thread(target=one, args=(replicas[i % 3], "k1" if i < 6 else f"x{i}"))
        for i in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 5  # the total holds ...
    assert len(replicas[0].active()) == 5
    per_key = [j.key_id for j in replicas[0].active()].count("k1")
    assert per_key <= 2  # ... and so does the key's share


def test_stored_inputs_are_bounded_in_bytes_across_jobs(replicas: list[JobRepository]) -> None:
    a, b, _ = replicas
    submit(a, 3, max_bytes=2000)  # about 240 bytes each
    with pytest.raises(QueueFullError) as full:
        submit(b, 10, key="k2", max_bytes=2000)
    assert full.value.which == "bytes"


def test_a_keys_work_is_bounded_across_its_jobs_and_replicas(
    replicas: list[JobRepository],
) -> None:
    """Issue 19, high 4: the pixels of one key's active jobs are bounded together, across
    replicas; another key submits meanwhile; a finished job's work no longer counts."""
    a, b, _ = replicas

    def start(repo: JobRepository, key: str, pixels: int) -> str:
        job = repo.create("identify", key, "default", {}, bytes(32), 10, 100, 60)
        sealed = seal_record(bytes(32), b"img", input_context(job.id, 0))
        repo.add_input(job.id, 0, "0.png", 3, sealed, 10**9, 60, pixels, 100_000_000)
        return job.id

    first = start(a, "k1", 60_000_000)
    a.enqueue(first, 1)
    with pytest.raises(QueueFullError) as full:  # the other replica sees k1's first job
        start(b, "k1", 60_000_000)
    assert full.value.which == "work"
    other = start(b, "k2", 60_000_000)  # another key has its own share
    b.enqueue(other, 1)
    while (claim := a.claim("worker", lease_s=30)) is not None:  # both jobs run
        assert a.finish(claim, "done")
    assert a.get(first).status == "done"
    b.enqueue(start(b, "k1", 60_000_000), 1)  # the finished job's work is done


def test_cancelled_jobs_stop_their_worker_and_lose_their_inputs(
    replicas: list[JobRepository],
) -> None:
    a, b, _ = replicas
    queued = submit(a, 3)
    running = submit(a, 5)
    assert b.cancel(queued).status == "cancelled"
    claim = a.claim("w", 30)
    assert claim is not None and claim.job_id == running  # the cancelled one is skipped
    assert work(a, claim, 2) == 2
    assert b.cancel(running).status == "cancelled"
    with pytest.raises(LeaseLostError):
        work(a, claim, 2)
    assert not a.finish(claim, "done")
    job = b.get(running)
    assert job.status == "cancelled" and job.done == 2 and len(job.results) == 2
    assert b.next_inputs(running, 100, 10**9) == [] == b.next_inputs(queued, 100, 10**9)
    assert b.cancel(running).status == "cancelled"  # again: as it is
    assert a.claim("w", 30) is None


def test_turns_go_to_the_namespace_and_key_served_longest_ago(
    replicas: list[JobRepository],
) -> None:
    repo = replicas[0]
    a_jobs = [submit(repo, 20, key="a", namespace="ns1") for _ in range(3)]
    b_job = submit(repo, 1, key="b", namespace="ns2")
    c_job = submit(repo, 1, key="c", namespace="ns1")
    order = []
    for _ in range(5):
        claim = repo.claim("w", 30)
        assert claim is not None
        order.append(claim.job_id)
        work(repo, claim, 1)
        if repo.next_inputs(claim.job_id, 1, 10**9):
            repo.release(claim)  # the end of its time slice
        else:
            repo.finish(claim, "done")
        time.sleep(0.01)
    # ns1 first (oldest job), then ns2 (never served), then ns1 again, whose key c has not
    # been served while a has; a's first job goes on only after everyone had a turn
    assert order[:3] == [a_jobs[0], b_job, c_job]
    assert order[3] == a_jobs[0]


def test_an_upload_abandoned_by_its_process_is_removed(replicas: list[JobRepository]) -> None:
    a, b, _ = replicas
    job = a.create("identify", "k", "default", {}, bytes(32), 5, 5, upload_lease_s=0.5)
    assert len(b.active()) == 1 and b.claim("w", 30) is None  # not claimable while uploading
    with pytest.raises(NotFoundError):
        b.get(job.id)  # nor visible
    time.sleep(0.7)
    assert b.reap_uploads() == 1 and b.active() == []


def test_inputs_are_sealed_in_the_database(url: str, replicas: list[JobRepository]) -> None:
    repo = replicas[0]
    job_id = submit(repo, 2)
    with repo.engine.connect() as conn:
        rows = conn.execute(text("SELECT data FROM job_inputs")).scalars().all()
    assert len(rows) == 2
    for raw in rows:
        assert b"image" not in bytes(raw)
    claim = repo.claim("w", 30)
    assert claim is not None
    key = repo.data_key(claim)
    assert key == bytes(32)
    assert claim.job_id == job_id
