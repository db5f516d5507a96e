"""Limits of the real service (``facerec serve``), on both storage configurations where
storage matters: refused callers rate-limited and audited in bounded space, subject
metadata, zip archives and the job queue; and, on the embedded one, hostile images."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from devkit.servers import Service, stop_gateway
from facerec.imaging.decode import DECODE_BYTES_PER_PIXEL
from gateway.bootstrap import open_audit, open_database
from gateway.settings import Settings
from tests.support.apiclient import directory_bomb, zip_of
from tests.support.data import GALLERY

pytestmark = pytest.mark.integration
IMAGES = sorted(GALLERY.glob("*.jpg"))


def settings_of(tmp_path: Path, storage: dict[str, Any]) -> Settings:
    return Settings(env="development", data_dir=tmp_path / "data", index_type="FLAT", **storage)


# -- refused callers --------------------------------------------------------------------
def test_wrong_key_floods_are_rate_limited_and_audited_in_bounded_space(
    serve: Any, storage: dict[str, Any], tmp_path: Path
) -> None:
    service = serve(
        FACEREC_TRUSTED_PROXIES="127.0.0.1",  # the tests play several clients through it
        FACEREC_AUTH_FAILURES_PER_MINUTE="5",
        FACEREC_REFUSAL_AUDIT_MAX_CLIENTS="3",
    )
    wrong = "frk_0123456789ab_" + "x" * 43

    def get(client: str, key: str) -> httpx.Response:
        return httpx.get(
            f"{service.url}/v1/subjects",
            headers={"X-API-Key": key, "X-Forwarded-For": client},
            timeout=30,
        )

    attacker, bystander = "203.0.113.1", "203.0.113.2"
    statuses = [get(attacker, wrong).status_code for _ in range(5)]
    assert statuses == [401] * 5
    r = get(attacker, wrong)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
    assert int(r.headers["retry-after"]) >= 1
    assert get(attacker, service.key).status_code == 429  # the client is held back whole
    assert get(bystander, service.key).status_code == 200  # others are not
    sent = 7
    for _ in range(40):
        assert get(attacker, wrong).status_code == 429
    sent += 40
    crowd = [f"198.51.100.{i}" for i in range(10)]
    for client in crowd:
        for _ in range(3):
            assert get(client, wrong).status_code == 401
    sent += 30
    stop_gateway(service)  # closes the aggregation windows

    settings = settings_of(tmp_path, storage)
    audit = open_audit(settings, open_database(settings))
    assert audit.verify().ok
    refused = [e for e in audit.events(0, 10_000) if e.outcome == "refused" and not e.key_id]
    assert sum(e.count or 1 for e in refused) == sent  # every refusal is accounted for
    # One window: per detailed client its first refusal and a count, plus one count for
    # the clients beyond FACEREC_REFUSAL_AUDIT_MAX_CLIENTS.
    assert len(refused) <= 2 * 3 + 1
    by_client = {e.client for e in refused}
    assert attacker in by_client and "*" in by_client and bystander not in by_client
    assert next(e for e in refused if e.client == attacker).request_id


# -- metadata ---------------------------------------------------------------------------
def nested(levels: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        meta = {"a": meta}
    return meta


def test_metadata_limits_and_a_listing_no_row_can_break(
    serve: Any, storage: dict[str, Any], tmp_path: Path
) -> None:
    service = serve()
    with service.client() as c:
        for meta in (nested(300), nested(17), {"blob": "x" * 20_000}):
            r = c.post("/v1/subjects", json={"name": "bad", "metadata": meta})
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "invalid_request"
            assert error["errors"][0]["loc"] == ["body", "metadata"]
        assert c.get("/v1/subjects").json()["total"] == 0  # nothing was stored
        r = c.post("/v1/subjects", json={"name": "deep", "metadata": nested(16)})
        assert r.status_code == 201
        sid = r.json()["id"]
        r = c.patch(f"/v1/subjects/{sid}", json={"metadata": nested(40)})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert c.get(f"/v1/subjects/{sid}").json()["metadata"] == nested(16)

        # A row stored before the limits existed (written past the API):
        settings = settings_of(tmp_path, storage)
        legacy = open_database(settings).subjects.create("legacy", nested(300))
        listing = c.get("/v1/subjects")
        assert listing.status_code == 200
        shown = {s["id"]: s["metadata"] for s in listing.json()["items"]}
        assert shown[sid] == nested(16)
        assert list(shown[legacy.id]) == ["_withheld"]
        assert c.get(f"/v1/subjects/{legacy.id}").status_code == 200
        r = c.patch(f"/v1/subjects/{legacy.id}", json={"metadata": {"fixed": True}})
        assert r.status_code == 200 and r.json()["metadata"] == {"fixed": True}


# -- archives and the job queue ---------------------------------------------------------
def zip_bomb(declared: int = 1000, inflated: int = 64 * 1024 * 1024) -> bytes:
    """One member that declares ``declared`` bytes and inflates to ``inflated`` (zeros)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.jpg", b"\0" * inflated)
    data = bytearray(out.getvalue())
    # Rewrite the uncompressed size in the local header (offset 22) and the central
    # directory entry (offset 24 from its signature).
    struct.pack_into("<I", data, 22, declared)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def submit(service: Service, body: bytes, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/jobs",
        files={"files": ("in.zip", body, "application/zip")},
        headers={"X-API-Key": key or service.key},
        timeout=60,
    )


def new_key(service: Service, role: str) -> str:
    with service.client() as c:
        token: str = c.post("/v1/keys", json={"role": role}).json()["token"]
        return token


def test_archives_are_refused_before_they_are_inflated_or_cut(serve: Any) -> None:
    service = serve(FACEREC_MAX_JOB_IMAGES="40", FACEREC_MAX_JOB_INFLATED_BYTES="150000")
    r = submit(service, zip_bomb())
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_archive", r.text
    # issue 19, high 3: a directory listing 20,000 entries (zip64, understating them) is
    # refused from its end record; another caller is served meanwhile
    r = submit(service, directory_bomb(20_000, zip64=True, declared=1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files", r.text
    with service.client() as c:
        probe = {"image": (IMAGES[0].name, IMAGES[0].read_bytes(), "image/jpeg")}
        assert c.post("/v1/identify", files=probe).status_code == 200
    r = submit(service, zip_of(IMAGES[:21], repeat=2))  # 42 images: over FACEREC_MAX_JOB_IMAGES
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
    assert r.json()["error"]["limit"] == 40
    r = submit(service, zip_of(IMAGES[:30]))  # 30 images, about 200 KB together
    assert r.status_code == 413 and r.json()["error"]["code"] == "archive_too_large"
    r = submit(service, zip_of(IMAGES[:4]))
    assert r.status_code == 202 and r.json()["total"] == 4


def wait_done(service: Service, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    with service.client() as c:
        while time.monotonic() < deadline:
            job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                return job
            time.sleep(0.5)
    raise TimeoutError(job_id)


def stored_inputs(tmp_path: Path, storage: dict[str, Any]) -> list[bytes]:
    """The job inputs as the database holds them."""
    engine = create_engine(settings_of(tmp_path, storage).sqlite_url)
    try:
        with engine.connect() as conn:
            return [bytes(r) for r in conn.execute(text("SELECT data FROM job_inputs")).scalars()]
    finally:
        engine.dispose()


def test_queued_jobs_are_bounded_and_their_inputs_sealed_in_the_database(
    serve: Any, storage: dict[str, Any], tmp_path: Path
) -> None:
    service = serve(FACEREC_MAX_JOBS_QUEUED_PER_KEY="2", FACEREC_MAX_JOBS_QUEUED="3")
    a, b = new_key(service, "identify"), new_key(service, "identify")
    slow = zip_of(IMAGES, repeat=2)  # 80 images: the first job outlasts the submissions
    accepted = [submit(service, slow, a), submit(service, slow, a)]
    assert [r.status_code for r in accepted] == [202, 202]
    r = submit(service, slow, a)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
    assert int(r.headers["retry-after"]) > 0
    accepted.append(submit(service, slow, b))
    assert accepted[-1].status_code == 202
    r = submit(service, slow, b)  # b has one, but the queue is full
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"

    stored = stored_inputs(tmp_path, storage)
    assert stored
    for content in stored:
        for image in IMAGES[:5]:
            raw = image.read_bytes()
            assert raw[200:264] not in content  # sealed: no run of the image in clear

    for r in accepted:
        job = wait_done(service, r.json()["id"])
        assert job["status"] == "done" and job["done"] == job["total"] == 80
    assert stored_inputs(tmp_path, storage) == []  # each job's inputs go with it
    assert submit(service, zip_of(IMAGES[:2]), b).status_code == 202  # room again


def flat_pngs(count: int, width: int = 3000, height: int = 2000) -> bytes:
    """A zip of ``count`` flat PNGs: a few KB each, ``width`` x ``height`` pixels."""
    one = io.BytesIO()
    Image.new("RGB", (width, height), (80, 80, 80)).save(one, "PNG")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(count):
            z.writestr(f"{i}.png", one.getvalue())
    return out.getvalue()


def test_the_work_of_a_job_and_of_a_key_is_bounded(serve: Any) -> None:
    """Issue 19, high 4: work is counted in pixels from the headers of compressible
    images: a job over its bound is refused (413), a key past its share of queued work
    is told to wait (429) while another key submits and identifies, and a cancelled job
    gives its share back. (No workers here: the jobs stay queued.)"""
    service = serve(
        FACEREC_WORKERS="false",
        FACEREC_MAX_JOB_PIXELS="20000000",
        FACEREC_MAX_JOB_PIXELS_PER_KEY="30000000",
    )
    a, b = new_key(service, "identify"), new_key(service, "identify")
    r = submit(service, flat_pngs(4), a)  # 24 M pixels in a 20 M job
    assert r.status_code == 413 and r.json()["error"]["code"] == "job_too_large", r.text
    first = submit(service, flat_pngs(3), a)  # 18 M
    assert first.status_code == 202
    r = submit(service, flat_pngs(3), a)  # 36 M for the key
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
    assert "pixels of work" in r.json()["error"]["message"]
    assert submit(service, flat_pngs(3), b).status_code == 202  # another key's own share
    with service.client() as c:
        probe = {"image": (IMAGES[0].name, IMAGES[0].read_bytes(), "image/jpeg")}
        assert c.post("/v1/identify", files=probe).status_code == 200
        assert c.delete(f"/v1/jobs/{first.json()['id']}").status_code == 200
    assert submit(service, flat_pngs(3), a).status_code == 202


# -- images (storage does not matter) ---------------------------------------------------
def claimed_size_jpeg(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims ``width`` x ``height``."""
    data = bytearray(IMAGES[0].read_bytes())
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    struct.pack_into(">HH", data, pos + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize("storage", ["embedded"], indirect=True)
def test_small_files_claiming_huge_frames_and_concurrent_large_images(serve: Any) -> None:
    big = 2000 * 2000 * DECODE_BYTES_PER_PIXEL["RGB"]  # what decoding one large JPEG takes
    service = serve(FACEREC_MAX_DECODE_BYTES_IN_FLIGHT=str(big + big // 2), FACEREC_BUSY_WAIT_S="0")
    hostile = claimed_size_jpeg(6000, 6000)
    assert len(hostile) < 10_000
    with service.client() as c:
        r = c.post("/v1/detect", files={"image": ("claims.jpg", hostile, "image/jpeg")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "truncated_image"

    face = Image.open(IMAGES[0]).convert("RGB").resize((2000, 2000))
    out = io.BytesIO()
    face.save(out, "JPEG", quality=90)
    large = out.getvalue()

    def detect(_: int) -> httpx.Response:
        return httpx.post(
            f"{service.url}/v1/detect",
            files={"image": ("large.jpg", large, "image/jpeg")},
            headers={"X-API-Key": service.key},
            timeout=120,
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(detect, range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    busy = [r for r in answers if r.status_code == 503]
    assert busy, "six 4-MP images at once in a budget of 1.5: some must be told to retry"
    for r in busy:
        assert r.json()["error"]["code"] == "busy" and int(r.headers["retry-after"]) >= 1
    assert detect(0).status_code == 200  # the budget is whole again afterwards

    # Issue 19, medium 1: channels and depth count. A compressible RGBA PNG (a few KB)
    # with 40 % more pixels than the JPEGs above costs more than the whole budget to
    # decode and is refused from its header; an RGB JPEG of the same size is served.
    side = 2400
    assert side * side * DECODE_BYTES_PER_PIXEL["RGBA"] > big + big // 2
    assert side * side * DECODE_BYTES_PER_PIXEL["RGB"] < big + big // 2
    flat = io.BytesIO()
    Image.new("RGBA", (side, side), (90, 90, 90, 255)).save(flat, "PNG")
    assert len(flat.getvalue()) < 100_000
    with service.client() as c:
        r = c.post("/v1/detect", files={"image": ("flat.png", flat.getvalue(), "image/png")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "image_too_large"
        assert "RGBA" in r.json()["error"]["message"]
        same = io.BytesIO()
        face.resize((side, side)).save(same, "JPEG", quality=90)
        r = c.post("/v1/detect", files={"image": ("rgb.jpg", same.getvalue(), "image/jpeg")})
        assert r.status_code == 200
