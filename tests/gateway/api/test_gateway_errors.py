"""Bad input over HTTP: every case gets a 4xx with a machine-readable code, and nothing
stored changes (subjects, faces, index, keys)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.settings import Settings
from tests.support.apiclient import image_files, one_image, settings_for
from tests.support.data import GALLERY, LFW

KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))
TWO_FACES = GALLERY / "Choi_Sung-hong_0003.jpg"


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def api_settings(storage: dict[str, Any], tmp_path: Path) -> Settings:
    """``client``'s settings (tests/gateway/conftest.py), with small upload limits."""
    return settings_for(
        tmp_path / "data", storage, max_upload_bytes=200_000, max_request_bytes=1_000_000
    )


@pytest.fixture
def kerry(client: TestClient) -> str:
    r = client.post("/v1/subjects", json={"name": "John Kerry"})
    sid: str = r.json()["id"]
    assert client.post(f"/v1/subjects/{sid}/faces", files=image_files(KERRY[:2])).status_code == 200
    return sid


def snapshot(client: TestClient) -> dict[str, Any]:
    gateway = client.app.state.gateway  # type: ignore[attr-defined]
    subjects = client.get("/v1/subjects", params={"limit": 500}).json()
    faces = {
        s["id"]: client.get(f"/v1/subjects/{s['id']}").json()["face_list"]
        for s in subjects["items"]
    }
    return {
        "subjects": subjects,
        "faces": faces,
        "index": gateway.gallery.index.current.count(),
        "keys": [k.__dict__ for k in gateway.admin.list_keys()],
    }


def expect(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


def test_auth_failures(client: TestClient, kerry: str) -> None:
    before = snapshot(client)
    admin = client.headers.pop("X-API-Key")
    expect(client.get("/v1/subjects"), 401, "missing_api_key")
    expect(client.get("/metrics"), 401, "missing_api_key")  # counts span every tenant
    expect(client.get("/v1/subjects", headers={"X-API-Key": "nonsense"}), 401, "invalid_api_key")
    key_id = admin.split("_")[1]
    wrong = f"frk_{key_id}_{'x' * 43}"
    expect(client.get("/v1/subjects", headers={"X-API-Key": wrong}), 401, "invalid_api_key")
    assert (
        client.get("/v1/subjects", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    )

    r = client.post(
        "/v1/keys", json={"role": "verify", "label": "kiosk"}, headers={"X-API-Key": admin}
    )
    assert r.status_code == 201
    verify_key, verify_id = r.json()["token"], r.json()["id"]
    h = {"X-API-Key": verify_key}
    expect(client.post("/v1/subjects", json={"name": "x"}, headers=h), 403, "forbidden")
    expect(client.get("/v1/audit", headers=h), 403, "forbidden")
    expect(client.get("/metrics", headers=h), 403, "forbidden")
    expect(client.delete(f"/v1/subjects/{kerry}", headers=h), 403, "forbidden")
    r = client.post("/v1/verify", files=one_image(KERRY[3]), data={"subject_id": kerry}, headers=h)
    assert r.status_code == 200 and r.json()["match"]
    assert client.delete(f"/v1/keys/{verify_id}", headers={"X-API-Key": admin}).status_code == 204
    expect(
        client.post("/v1/verify", files=one_image(KERRY[3]), data={"subject_id": kerry}, headers=h),
        401,
        "revoked_api_key",
    )
    client.headers["X-API-Key"] = admin
    after = snapshot(client)
    assert after["subjects"] == before["subjects"] and after["index"] == before["index"]
    client.app.state.gateway.admin.refusals.flush(everything=True)  # type: ignore[attr-defined]
    events = client.get("/v1/audit", params={"limit": 1000}).json()["events"]
    refused = [e for e in events if e["action"] == "auth" and e["outcome"] == "refused"]
    # Every refused request is audited: the 4 of a key holder one by one, the 5 without a
    # valid key as the client's first refusal plus one event counting the other 4.
    assert [e["key_id"] for e in refused if e["key_id"]] == [verify_id] * 4
    assert sum(e["count"] or 1 for e in refused) == 9
    assert all(e["client"] == "testclient" for e in refused)


def test_bad_requests_change_nothing(client: TestClient, kerry: str) -> None:
    before = snapshot(client)
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    jpeg = KERRY[3].read_bytes()
    cases: list[tuple[Any, int, str]] = [
        # uploads
        (lambda: client.post("/v1/identify", data={"top_k": "3"}), 415, "unsupported_media_type"),
        (lambda: client.post("/v1/identify", files={"other": ("a", b"x")}), 422, "invalid_request"),
        (lambda: client.post("/v1/identify", json={"image": "x"}), 415, "unsupported_media_type"),
        (  # over the image limit (200 KB) within the route's (image + 64 KiB of form)
            lambda: client.post(
                "/v1/identify", files={"image": ("big.png", png(noise[:265, :265]), "image/png")}
            ),
            413,
            "file_too_large",
        ),
        (  # over the route's limit: refused as the bytes arrive, before the form is parsed
            lambda: client.post(
                "/v1/identify", files={"image": ("big.png", png(noise), "image/png")}
            ),
            413,
            "payload_too_large",
        ),
        (
            lambda: client.post("/v1/identify", files={"image": ("a.txt", b"hello", "text/plain")}),
            422,
            "not_an_image",
        ),
        (
            lambda: client.post("/v1/identify", files={"image": ("a.jpg", b"", "image/jpeg")}),
            422,
            "empty_file",
        ),
        (
            lambda: client.post("/v1/identify", files={"image": ("t.jpg", jpeg[: len(jpeg) // 2])}),
            422,
            "truncated_image",
        ),
        (
            lambda: client.post(
                "/v1/identify", files={"image": ("tiny.png", png(np.zeros((8, 8, 3), np.uint8)))}
            ),
            422,
            "image_too_small",
        ),
        (
            lambda: client.post(
                "/v1/identify",
                content=b"x" * 10,
                headers={
                    "content-type": "multipart/form-data; boundary=zz",
                    "content-length": "2000000",
                },
            ),
            413,
            "payload_too_large",
        ),
        # parameters
        (
            lambda: client.post("/v1/identify", files=one_image(KERRY[3]), data={"top_k": "0"}),
            422,
            "invalid_request",
        ),
        (
            lambda: client.post("/v1/identify", files=one_image(KERRY[3]), data={"threshold": "2"}),
            422,
            "invalid_request",
        ),
        (lambda: client.get("/v1/subjects", params={"limit": 0}), 422, "invalid_request"),
        # JSON bodies
        (
            lambda: client.post(
                "/v1/subjects", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
            "malformed_json",
        ),
        (lambda: client.post("/v1/subjects", json={"name": ""}), 422, "invalid_request"),
        (
            lambda: client.post("/v1/subjects", json={"name": "a", "evil": 1}),
            422,
            "invalid_request",
        ),
        (lambda: client.post("/v1/subjects", json=["name"]), 422, "invalid_request"),
        # text that is not Unicode (JSON's escape of a lone surrogate), in any field
        *(
            (
                lambda body=body: client.post(
                    "/v1/subjects", content=body, headers={"content-type": "application/json"}
                ),
                422,
                "invalid_request",
            )
            for body in (
                b'{"name": "a", "metadata": {"x": "\\ud800"}}',
                b'{"name": "a", "metadata": {"\\udfff": 1}}',
                b'{"name": "\\ud800"}',
            )
        ),
        (
            lambda: client.patch(
                f"/v1/subjects/{kerry}",
                content=b'{"metadata": {"x": ["\\ud800"]}}',
                headers={"content-type": "application/json"},
            ),
            422,
            "invalid_request",
        ),
        # times past the calendar's ends once moved to UTC
        *(
            (
                lambda when=when: client.post(
                    "/v1/subjects", json={"name": "a", "expires_at": when}
                ),
                422,
                "invalid_request",
            )
            for when in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00")
        ),
        (
            lambda: client.patch(
                f"/v1/subjects/{kerry}", json={"expires_at": "9999-12-31T23:59:59-05:00"}
            ),
            422,
            "invalid_request",
        ),
        # a sequence number past 64 bits
        (
            lambda: client.get("/v1/audit", params={"after": 2**63}),
            422,
            "invalid_request",
        ),
        # unknown or malformed ids
        (lambda: client.get("/v1/subjects/0123456789abcdef"), 404, "not_found"),
        (lambda: client.get('/v1/subjects/bad"id'), 400, "invalid_id"),
        (lambda: client.patch("/v1/subjects/nope", json={"name": "x"}), 404, "not_found"),
        (lambda: client.delete("/v1/subjects/nope"), 404, "not_found"),
        (lambda: client.delete(f"/v1/subjects/{kerry}/faces/nope"), 404, "not_found"),
        (
            lambda: client.post("/v1/subjects/nope/faces", files=image_files(KERRY[3:4])),
            404,
            "not_found",
        ),
        (
            lambda: client.post(
                "/v1/verify", files=one_image(KERRY[3]), data={"subject_id": "nope"}
            ),
            404,
            "not_found",
        ),
        (lambda: client.get("/v1/jobs/nope"), 404, "not_found"),
        # routes and methods
        (lambda: client.get("/v1/identify"), 405, "method_not_allowed"),
        (lambda: client.get("/v1/nothing-here"), 404, "not_found"),
        # images without a usable face
        (
            lambda: client.post(
                "/v1/verify",
                files={"image": ("n.png", png(noise[:150, :150]))},
                data={"subject_id": kerry},
            ),
            422,
            "no_face",
        ),
        (
            lambda: client.post(
                f"/v1/subjects/{kerry}/faces", files=[("images", ("n.png", png(noise[:150, :150])))]
            ),
            422,
            "no_face",
        ),
        (
            lambda: client.post(f"/v1/subjects/{kerry}/faces", files=image_files([TWO_FACES])),
            422,
            "multiple_faces",
        ),
        (
            lambda: client.post(
                f"/v1/subjects/{kerry}/faces", files=image_files([TWO_FACES]), data={"face": "7"}
            ),
            400,
            "invalid_face_choice",
        ),
        # the same image again
        (
            lambda: client.post(f"/v1/subjects/{kerry}/faces", files=image_files(KERRY[:1])),
            409,
            "duplicate_face",
        ),
    ]
    for call, status, code in cases:
        expect(call(), status, code)
    assert snapshot(client) == before


def test_subject_without_faces_and_face_choice(client: TestClient) -> None:
    sid = client.post("/v1/subjects", json={"name": "Choi"}).json()["id"]
    expect(
        client.post("/v1/verify", files=one_image(KERRY[0]), data={"subject_id": sid}),
        422,
        "subject_has_no_faces",
    )
    body = expect(
        client.post(f"/v1/subjects/{sid}/faces", files=image_files([TWO_FACES])),
        422,
        "multiple_faces",
    )
    assert len(body["error"]["results"][0]["error"]["faces"]) == 2
    r = client.post(
        f"/v1/subjects/{sid}/faces", files=image_files([TWO_FACES]), data={"face": "primary"}
    )
    assert r.status_code == 200 and r.json()["enrolled"] == 1
    # mixed request: one good image, one bad: 200 with a result per image
    r = client.post(
        f"/v1/subjects/{sid}/faces",
        files=[
            *image_files(sorted(GALLERY.glob("Choi_Sung-hong_000[12].jpg"))),
            ("images", ("bad.jpg", b"junk", "image/jpeg")),
        ],
    )
    assert r.status_code == 200
    assert [
        (x["face_id"] is not None, (x["error"] or {}).get("code")) for x in r.json()["results"]
    ] == [
        (True, None),
        (True, None),
        (False, "not_an_image"),
    ]


def test_reused_idempotency_keys_change_nothing(client: TestClient) -> None:
    """A key reused for another request is refused; its replay changes nothing either
    (``tests/gateway/api/test_gateway_idempotency.py`` has the whole contract)."""
    h = {"Idempotency-Key": "create-bob-1"}
    created = client.post("/v1/subjects", json={"name": "Bob"}, headers=h)
    assert created.status_code == 201
    before = snapshot(client)
    expect(
        client.post("/v1/subjects", json={"name": "Rob"}, headers=h), 409, "idempotency_key_reused"
    )
    replay = client.post("/v1/subjects", json={"name": "Bob"}, headers=h)
    assert replay.status_code == 201 and replay.json() == created.json()
    assert snapshot(client) == before
    sid = created.json()["id"]
    h2 = {"Idempotency-Key": "bob-faces-1"}
    r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(KERRY[:1]), headers=h2)
    assert r.status_code == 200
    mid = snapshot(client)
    expect(
        client.post(f"/v1/subjects/{sid}/faces", files=image_files(KERRY[1:2]), headers=h2),
        409,
        "idempotency_key_reused",
    )
    assert snapshot(client) == mid


def test_patch_and_openapi(client: TestClient, kerry: str) -> None:
    r = client.patch(
        f"/v1/subjects/{kerry}",
        json={"metadata": {"team": "red"}, "expires_at": "2030-01-01T00:00:00Z"},
    )
    assert r.status_code == 200 and r.json()["metadata"] == {"team": "red"}
    assert r.json()["expires_at"].startswith("2030-01-01")
    r = client.patch(f"/v1/subjects/{kerry}", json={"expires_at": None})
    assert r.json()["expires_at"] is None and r.json()["name"] == "John Kerry"
    schema = client.get("/openapi.json").json()
    assert {"/v1/subjects", "/v1/verify", "/v1/identify", "/v1/jobs", "/v1/audit"} <= set(
        schema["paths"]
    )
    assert client.get("/docs").status_code == 200
    assert json.dumps(schema)  # serialisable
    assert "facerec_http_requests_total" in client.get("/metrics").text
    assert client.get("/readyz").json()["ready"] is True
    assert LFW.exists()
