"""``Idempotency-Key`` on the real service (``facerec serve``), both storage
configurations: a refused request does not use its key up; a replay of a success gets the
original status and body back and changes nothing; the same key with another request is
409; concurrent copies of one request create one thing; kept responses are sealed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devkit.servers import storage_env
from gateway.bootstrap import open_database
from gateway.settings import Settings
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration
KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))


def key(name: str) -> dict[str, str]:
    return {"Idempotency-Key": name}


def code(r: httpx.Response) -> str | None:
    return r.json()["error"]["code"] if r.status_code >= 400 else None


def image(path: Path) -> dict[str, Any]:
    return {"images": (path.name, path.read_bytes(), "image/jpeg")}


def not_a_face() -> dict[str, Any]:
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    return {"images": ("noise.png", out.getvalue(), "image/png")}


def test_idempotency_keys(storage: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_gateway(data, storage_env(storage)) as service, service.client() as c:
        # a 4xx does not use the key up: the corrected request goes through with it
        r = c.post("/v1/subjects", json={"name": ""}, headers=key("create-ada"))
        assert (r.status_code, code(r)) == (422, "invalid_request")
        first = c.post("/v1/subjects", json={"name": "Ada"}, headers=key("create-ada"))
        assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
        again = c.post("/v1/subjects", json={"name": "Ada"}, headers=key("create-ada"))
        assert again.status_code == 201 and again.json() == first.json()  # the same id
        assert again.headers["Idempotent-Replayed"] == "true"
        sid = first.json()["id"]
        r = c.post("/v1/subjects", json={"name": "Bob"}, headers=key("create-ada"))
        assert (r.status_code, code(r)) == (409, "idempotency_key_reused")
        assert [s["name"] for s in c.get("/v1/subjects").json()["items"]] == ["Ada"]

        # multipart: the retry has another boundary and is still the same request
        r = c.post(f"/v1/subjects/{sid}/faces", files=not_a_face(), headers=key("ada-face"))
        assert (r.status_code, code(r)) == (422, "no_face")
        first = c.post(f"/v1/subjects/{sid}/faces", files=image(KERRY[0]), headers=key("ada-face"))
        assert first.status_code == 200 and first.json()["enrolled"] == 1
        again = c.post(f"/v1/subjects/{sid}/faces", files=image(KERRY[0]), headers=key("ada-face"))
        assert again.status_code == 200 and again.json() == first.json()
        assert "embedding" not in again.text  # responses hold no templates
        r = c.post(f"/v1/subjects/{sid}/faces", files=image(KERRY[1]), headers=key("ada-face"))
        assert (r.status_code, code(r)) == (409, "idempotency_key_reused")
        assert c.get(f"/v1/subjects/{sid}").json()["faces"] == 1

        # a new API key's token is shown once: its replay has the record, not the token
        made = c.post("/v1/keys", json={"role": "enrol"}, headers=key("enrol-key"))
        assert made.status_code == 201 and made.json()["token"]
        again = c.post("/v1/keys", json={"role": "enrol"}, headers=key("enrol-key"))
        assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
        assert again.json()["token"] is None
        assert len(c.get("/v1/keys").json()) == 2

        # keys belong to their API key: another caller's "create-ada" is its own
        other = {"X-API-Key": made.json()["token"], **key("create-ada")}
        r = c.post("/v1/subjects", json={"name": "Eve"}, headers=other)
        assert r.status_code == 201 and r.json()["id"] != sid

        # an admin's X-Namespace is part of the request: the same key and body in
        # another namespace is another request (409), never a replay of the first
        in_a = {"X-Namespace": "ns_a", **key("create-dee")}
        in_b = {"X-Namespace": "ns_b", **key("create-dee")}
        r = c.post("/v1/subjects", json={"name": "Dee"}, headers=in_a)
        assert r.status_code == 201 and r.json()["namespace"] == "ns_a"
        r = c.post("/v1/subjects", json={"name": "Dee"}, headers=in_b)
        assert (r.status_code, code(r)) == (409, "idempotency_key_reused")
        listed = c.get("/v1/subjects", headers={"X-Namespace": "ns_b"}).json()["items"]
        assert listed == []
        r = c.post("/v1/subjects", json={"name": "Dee"}, headers=in_a)
        assert r.headers["Idempotent-Replayed"] == "true"

        # concurrent copies of one request: one subject, the others replay or wait
        def create(_: int) -> tuple[int, str | None, str | None]:
            with service.client() as cc:
                r = cc.post("/v1/subjects", json={"name": "Cy"}, headers=key("create-cy"))
                return (
                    r.status_code,
                    code(r),
                    (r.json().get("id") if r.status_code == 201 else None),
                )

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(create, range(8)))
        assert {(s, c_) for s, c_, _ in outcomes} <= {(201, None), (409, "request_in_progress")}
        assert len({i for _, _, i in outcomes if i}) == 1
        names = [s["name"] for s in c.get("/v1/subjects").json()["items"]]
        assert names.count("Cy") == 1

        # a delete replayed is the same 204, not a 404
        assert c.delete(f"/v1/subjects/{sid}", headers=key("drop-ada")).status_code == 204
        r = c.delete(f"/v1/subjects/{sid}", headers=key("drop-ada"))
        assert r.status_code == 204 and r.headers["Idempotent-Replayed"] == "true"
        assert c.delete(f"/v1/subjects/{sid}").status_code == 404

        # routes that change nothing ignore the header
        probe = {"image": (KERRY[2].name, KERRY[2].read_bytes())}
        for _ in range(2):
            r = c.post("/v1/identify", files=probe, headers=key("look"))
            assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers

    # the kept responses are sealed: no subject id, no face id in the clear
    db = open_database(Settings(env="development", data_dir=data, **storage))
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT key, response FROM requests")).all()
    kept = [bytes(r[1]) for r in rows if r[1] is not None]
    assert len(kept) == 7  # three subjects, a face, a key, the other caller's, a delete
    assert not any(sid.encode() in blob or b"face_id" in blob for blob in kept)
