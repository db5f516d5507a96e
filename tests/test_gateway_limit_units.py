"""The pieces behind the gateway's limits, alone: the failed-auth throttle, the aggregated
refusal log, metadata depth, the sealed job spool, zip members inflated in chunks, the audit
chain's late fields, and the route policies derived from the app."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest

from facerec.errors import FaceRecError
from gateway.api.policy import Policies, valid_request_id
from gateway.api.routes import admin, health, jobs, recognition, subjects
from gateway.audit.chain import AuditEvent, _mac, chain_event, verify_chain
from gateway.audit.refusals import RefusalLog
from gateway.auth.throttle import FailureThrottle, TooManyRequestsError
from gateway.crypto.envelope import MasterKey
from gateway.service.jobs import JobLimits, _read_member, spool_uploads
from gateway.service.metadata import MetadataLimits, check_metadata, depth, readable
from gateway.service.spool import JobSpool, clear_spools
from gateway.service.types import Upload
from gateway.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_refuses_after_the_budget_and_refills() -> None:
    clock = Clock()
    throttle = FailureThrottle(per_minute=3, clock=clock)
    for _ in range(3):
        throttle.check("a")
        throttle.failed("a")
    with pytest.raises(TooManyRequestsError) as caught:
        throttle.check("a")
    assert caught.value.http_status == 429 and caught.value.details["retry_after"] == 20
    throttle.check("b")  # another client is not affected
    clock.now += 20  # one token back (3 per minute)
    throttle.check("a")


def test_throttle_forgets_the_oldest_clients_beyond_its_size() -> None:
    throttle = FailureThrottle(per_minute=1, max_clients=2, clock=Clock())
    for client in ("a", "b", "c"):
        throttle.failed(client)
    throttle.check("a")  # forgotten: allowed again
    with pytest.raises(TooManyRequestsError):
        throttle.check("c")


def test_refusal_log_writes_one_event_per_client_and_window_plus_counts() -> None:
    clock, events = Clock(), []
    log = RefusalLog(lambda **e: events.append(e), window_s=60, max_clients=2, clock=clock)
    for _ in range(100):
        log.refused("1.1.1.1", "auth", request_id="r")
    for client in ("2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5"):
        log.refused(client, "auth")
    assert [e["client"] for e in events] == ["1.1.1.1", "2.2.2.2"]  # the first of each
    clock.now += 61
    log.flush()
    counts = {e["client"]: e.get("count") for e in events}
    assert counts == {"1.1.1.1": 99, "2.2.2.2": None, "*": 3}
    assert sum(e.get("count") or 1 for e in events) == 104
    log.refused("1.1.1.1", "auth")  # a new window: detailed again
    assert events[-1]["client"] == "1.1.1.1" and "count" not in events[-1]


def test_metadata_depth_is_counted_without_recursion() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    assert depth(deep, 16) == 17  # stops counting past the limit; no RecursionError
    assert depth({"a": [1, {"b": 2}]}, 16) == 3
    limits = MetadataLimits(max_depth=3, max_bytes=100)
    check_metadata({"a": [1, {"b": 2}]}, limits)
    with pytest.raises(FaceRecError) as caught:
        check_metadata({"a": [[{"b": 2}]]}, limits)
    assert caught.value.code == "invalid_request" and caught.value.http_status == 422
    with pytest.raises(FaceRecError):
        check_metadata({"a": "x" * 200}, limits)
    assert list(readable({"a": [[{"b": 2}]]}, limits)) == ["_withheld"]


def test_spool_is_sealed_read_back_in_order_and_deleted(tmp_path: Path) -> None:
    spool = JobSpool(tmp_path / "spool", "job1")
    images = [(f"img{i}.jpg", bytes([i]) * 5000) for i in range(5)]
    for name, data in images:
        spool.add(name, data)
    spool.finish()
    raw = spool.path.read_bytes()
    assert all(data[:64] not in raw for _, data in images)
    assert [(u.name, u.data) for u in spool] == images
    spool.discard()
    assert not spool.path.exists()
    left = JobSpool(tmp_path / "spool", "job2")
    left.finish()
    assert clear_spools(tmp_path / "spool") == 1 and not left.path.exists()


def lying_zip(declared: int, inflated: int) -> zipfile.ZipFile:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m.jpg", b"\0" * inflated)
    archive = zipfile.ZipFile(io.BytesIO(out.getvalue()))
    archive.infolist()[0].file_size = declared  # what a hostile header would say
    return archive


def test_a_member_is_inflated_in_chunks_and_never_past_its_declared_size() -> None:
    archive = lying_zip(declared=1000, inflated=256 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as caught:  # bad_archive here, or zipfile's CRC check
            _read_member(archive, archive.infolist()[0], "a.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # not the 256 MiB it would inflate to
    assert "bad_archive" in str(getattr(caught.value, "code", "")) or "CRC" in str(caught.value)


def test_job_totals_and_counts_are_refused_before_spooling_past_them(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i in range(5):
            z.writestr(f"{i}.jpg", b"x" * 1000)
    upload = Upload("a.zip", out.getvalue())
    spool = JobSpool(tmp_path, "j")
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], spool, JobLimits(max_files=4))
    assert caught.value.code == "too_many_files" and spool.count == 0
    spool = JobSpool(tmp_path, "k")
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], spool, JobLimits(max_inflated_bytes=2500))
    assert caught.value.code == "archive_too_large" and spool.count == 2
    spool = JobSpool(tmp_path, "l")  # the other queued jobs leave room for 3 images
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], spool, JobLimits(), room=3500)
    assert caught.value.code == "too_many_jobs" and caught.value.http_status == 429


def test_audit_events_from_before_the_client_field_still_verify() -> None:
    key = MasterKey.generate().derive("audit")
    body = {
        "seq": 1,
        "time": "t",
        "action": "auth",
        "outcome": "refused",
        "key_id": None,
        "role": None,
        "subject": None,
        "score": None,
        "request_id": "r",
        "prev": "0" * 64,
    }
    old = AuditEvent(**body, mac=_mac(key, body))  # as an older release chained it
    stored = AuditEvent(**json.loads(json.dumps(old.__dict__)))
    new = chain_event(key, stored, time="t2", action="auth", outcome="refused", client="x", count=5)
    assert verify_chain(key, [stored, new]).ok
    tampered = AuditEvent(**{**new.__dict__, "count": 1})
    assert not verify_chain(key, [stored, tampered]).ok


def test_every_protected_route_has_a_role_and_a_body_limit() -> None:
    settings = Settings(env="development", max_upload_bytes=1_000_000)
    routes = [
        r
        for router in (subjects.router, recognition.router, jobs.router, admin.router)
        for r in router.routes
    ]
    policies = Policies(routes, settings)
    kinds = {(r.path, m): p for r, p in policies.table for m in getattr(r, "methods", ())}
    assert all(p.role is not None for _, p in policies.table)
    assert kinds[("/v1/subjects", "POST")].kind == "json"
    assert kinds[("/v1/subjects", "POST")].limit == settings.max_json_bytes
    assert kinds[("/v1/identify", "POST")].limit == 1_000_000 + 64 * 1024
    assert kinds[("/v1/verify/pair", "POST")].limit == 2 * 1_000_000 + 64 * 1024
    assert kinds[("/v1/subjects/{subject_id}/faces", "POST")].limit == settings.max_request_bytes
    assert kinds[("/v1/jobs", "POST")].limit == settings.max_archive_bytes
    assert kinds[("/v1/keys", "POST")].role == "admin"
    public = Policies(health.router.routes, settings)
    assert all(p.role is None for _, p in public.table)
    assert valid_request_id("a-b.c:d_e") and not valid_request_id("a b")
