"""The pieces behind the gateway's limits, alone: the failed-auth throttle, the aggregated
refusal log, metadata depth, zip archives (directory bombs, members inflated in chunks), the audit
chain's late fields, and the route policies derived from the app."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from typing import Any

import pytest
from PIL import Image

from facerec.errors import FaceRecError
from gateway.api.policy import Policies, valid_request_id
from gateway.api.routes import admin, health, jobs, recognition, subjects
from gateway.audit.chain import AuditEvent, _mac, chain_event, verify_chain
from gateway.audit.refusals import RefusalLog
from gateway.auth.throttle import FailureThrottle, TooManyRequestsError
from gateway.crypto.envelope import MasterKey
from gateway.service.jobs import (
    ImageSink,
    JobLimits,
    _read_member,
    central_directory,
    spool_uploads,
)
from gateway.service.metadata import MetadataLimits, check_metadata, depth, readable
from gateway.service.types import Upload
from gateway.settings import Settings
from tests.support.apiclient import directory_bomb


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


def test_job_totals_and_counts_are_refused_before_spooling_past_them() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i in range(5):
            z.writestr(f"{i}.jpg", b"x" * 1000)
    upload = Upload("a.zip", out.getvalue())
    kept: list[tuple[int, str, bytes]] = []
    sink = ImageSink(lambda i, name, data, _: kept.append((i, name, data)))
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], sink, JobLimits(max_files=4))
    assert caught.value.code == "too_many_files" and sink.count == 0 and not kept
    sink = ImageSink(lambda i, name, data, _: kept.append((i, name, data)))
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], sink, JobLimits(max_inflated_bytes=2500))
    assert caught.value.code == "archive_too_large" and sink.count == 2
    assert [(i, n) for i, n, _ in kept] == [(0, "a.zip/0.jpg"), (1, "a.zip/1.jpg")]
    # a file sent as is (not a zip) is one image: within the per-image limit
    big = Upload("big.jpg", b"\xff\xd8" + b"x" * 3000)
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([big], ImageSink(lambda *_: None), JobLimits(max_image_bytes=3000))
    assert caught.value.code == "file_too_large"


def test_a_jobs_work_is_counted_from_the_headers_and_bounded() -> None:
    """Issue 19, high 4: highly compressible large images (a few KB of zip for 40 M
    pixels each) are counted by the pixels they declare; past the job's bound the job is
    refused, with nothing more inflated."""
    flat = io.BytesIO()
    Image.new("RGB", (3000, 2000), (80, 80, 80)).save(flat, "PNG")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(5):
            z.writestr(f"{i}.png", flat.getvalue())
        z.writestr("junk.jpg", b"not an image")
    upload = Upload("flat.zip", out.getvalue())
    assert len(upload.data) < 200_000
    counted: list[int] = []
    sink = ImageSink(lambda *args: counted.append(args[3]))
    spool_uploads([upload], sink, JobLimits())
    assert counted == [6_000_000] * 5 + [0] and sink.pixels == 30_000_000
    sink = ImageSink(lambda *args: counted.append(args[3]))
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([upload], sink, JobLimits(max_job_pixels=15_000_000))
    assert caught.value.code == "job_too_large" and caught.value.http_status == 413
    assert sink.count == 3  # the third passed the bound: the rest never inflated


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("lying", [False, True])
def test_a_central_directory_bomb_is_refused_from_its_end_record(zip64: bool, lying: bool) -> None:
    """Refused whether the end records tell the number of entries or understate it (the
    records are counted where the directory lies, as ``zipfile`` would read them)."""
    limits = JobLimits(max_files=10)
    bomb = directory_bomb(200, zip64, declared=1 if lying else None)  # > 4 per image
    entries, offset, size = central_directory(bomb)
    assert (entries, size) == (
        1 if lying else 200,
        200 * 46 + sum(len(f"{i}.jpg") for i in range(200)),
    )
    assert bomb[offset : offset + 4] == b"PK\x01\x02"
    parsed = []
    sink = ImageSink(lambda *_: parsed.append(1))
    tracemalloc.start()
    try:
        with pytest.raises(FaceRecError) as caught:
            spool_uploads([Upload("bomb.zip", bomb)], sink, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "too_many_files" and caught.value.http_status == 413
    assert not parsed and peak < len(bomb)  # refused before zipfile read the directory
    small = directory_bomb(30, zip64)  # within 4 entries per image: zipfile reads it
    with pytest.raises(FaceRecError) as caught:
        spool_uploads([Upload("small.zip", small)], ImageSink(lambda *_: None), limits)
    assert caught.value.code == "too_many_files"  # 30 .jpg members: over 10 images


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
    health_routes = {(r.path, p.role) for r, p in Policies(health.router.routes, settings).table}
    assert health_routes == {("/healthz", None), ("/readyz", None), ("/metrics", "admin")}
    assert valid_request_id("a-b.c:d_e") and not valid_request_id("a b")


def test_connections_count_per_client_address_and_ipv6_per_64() -> None:
    from gateway.api.server import client_group

    assert client_group("127.0.0.1") == "127.0.0.1" != client_group("127.0.0.2")
    assert client_group("::ffff:10.0.0.7") == "10.0.0.7"  # an IPv4 client over IPv6
    # one host picks addresses from its /64 at will: they are one client
    assert client_group("2001:db8:1:2::5") == client_group("2001:db8:1:2:ffff::9")
    assert client_group("2001:db8:1:2::5") != client_group("2001:db8:1:3::5")
    assert client_group(None) is None
