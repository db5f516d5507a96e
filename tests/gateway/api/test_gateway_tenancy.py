"""Tenancy on the real service (``facerec serve``), both storage configurations: every
subject belongs to a namespace (its creating key's tenant) and a gallery; a key sees only
its namespace (and its gallery, when it is limited to one): anything else is 404, as if it
did not exist, in reads, changes, enrolment, verification, identification and jobs. Admin
keys choose a namespace with ``X-Namespace``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from devkit.servers import Service
from tests.support.apiclient import one_image
from tests.support.data import GALLERY
from tests.support.gateway import client_with_key

pytestmark = pytest.mark.integration
KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))
HASTERT = sorted(GALLERY.glob("Dennis_Hastert_*.jpg"))


def code(r: httpx.Response) -> str | None:
    return r.json()["error"]["code"] if r.status_code >= 400 else None


def candidates(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {c["subject_id"] for f in r.json()["faces"] for c in f["candidates"]}


def matches(r: httpx.Response) -> set[str | None]:
    return {(f["match"] or {}).get("subject_id") for f in r.json()["faces"]}


def test_namespaces_and_gallery_scopes(serve: Callable[..., Service]) -> None:
    service = serve()
    with service.client() as admin:

        def key(role: str, namespace: str, gallery: str | None = None) -> httpx.Client:
            body = {"role": role, "namespace": namespace, "gallery": gallery}
            r = admin.post("/v1/keys", json=body)
            assert r.status_code == 201, r.text
            assert (r.json()["namespace"], r.json()["gallery"]) == (namespace, gallery)
            return client_with_key(service, r.json()["token"])

        acme, globex = key("enrol", "acme"), key("enrol", "globex")
        acme_id, globex_id = key("identify", "acme"), key("identify", "globex")
        lobby, lobby_id = key("enrol", "acme", "lobby"), key("identify", "acme", "lobby")
        globex_verify = key("verify", "globex")
        r = admin.post("/v1/keys", json={"role": "admin", "gallery": "lobby"})
        assert (r.status_code, code(r)) == (422, "invalid_request")

        def subject(client: httpx.Client, name: str, photos: list[Path], **extra: str) -> str:
            r = client.post("/v1/subjects", json={"name": name, **extra})
            assert r.status_code == 201, r.text
            sid: str = r.json()["id"]
            files = [one_image(p, "images")["images"] for p in photos]
            r = client.post(f"/v1/subjects/{sid}/faces", files=[("images", f) for f in files])
            assert r.status_code == 200 and r.json()["enrolled"] == len(photos), r.text
            return sid

        kerry = subject(acme, "John Kerry", KERRY[:2])
        hastert = subject(lobby, "Dennis Hastert", HASTERT[:2])
        twin = subject(globex, "John Kerry at Globex", KERRY[2:4])  # same person, other tenant
        got = acme.get(f"/v1/subjects/{kerry}").json()
        assert (got["namespace"], got["gallery"]) == ("acme", "default")
        got = acme.get(f"/v1/subjects/{hastert}").json()
        assert (got["namespace"], got["gallery"]) == ("acme", "lobby")

        # another namespace's subject does not exist for this key, whatever it does
        for call in (
            lambda: globex.get(f"/v1/subjects/{kerry}"),
            lambda: globex.patch(f"/v1/subjects/{kerry}", json={"name": "mine"}),
            lambda: globex.delete(f"/v1/subjects/{kerry}"),
            lambda: globex.post(f"/v1/subjects/{kerry}/faces", files=one_image(KERRY[4], "images")),
            lambda: globex.delete(f"/v1/subjects/{kerry}/faces/{'0' * 32}"),
            lambda: globex_verify.post(
                "/v1/verify", data={"subject_id": kerry}, files=one_image(KERRY[4])
            ),
            lambda: lobby.get(f"/v1/subjects/{kerry}"),  # acme, but not its gallery
            lambda: lobby.delete(f"/v1/subjects/{kerry}"),
        ):
            r = call()
            assert (r.status_code, code(r)) == (404, "not_found"), r.text
        assert acme.get(f"/v1/subjects/{kerry}").json()["name"] == "John Kerry"
        assert acme.get(f"/v1/subjects/{kerry}").json()["faces"] == 2
        assert {s["id"] for s in globex.get("/v1/subjects").json()["items"]} == {twin}
        assert {s["id"] for s in acme.get("/v1/subjects").json()["items"]} == {kerry, hastert}
        assert {s["id"] for s in lobby.get("/v1/subjects").json()["items"]} == {hastert}
        r = globex_verify.post("/v1/verify", data={"subject_id": twin}, files=one_image(KERRY[4]))
        assert r.status_code == 200 and r.json()["match"]

        # a gallery-limited key adds subjects to its own gallery only
        r = lobby.post("/v1/subjects", json={"name": "x", "gallery": "default"})
        assert (r.status_code, code(r)) == (403, "forbidden")

        # identification searches the caller's namespace (and gallery) only, decides at
        # the operating point for the size of that gallery (another tenant's size shows
        # nowhere), and shows an identify key only candidates at or above the threshold
        probe = one_image(KERRY[4])
        r = acme_id.post("/v1/identify", files=probe, data={"top_k": "100"})
        assert matches(r) == {kerry} and candidates(r) == {kerry}  # Hastert is below
        assert r.json()["gallery_size"] == 2
        r = admin.post(
            "/v1/identify", files=probe, data={"top_k": "100"}, headers={"X-Namespace": "acme"}
        )
        assert candidates(r) == {kerry, hastert} and r.json()["gallery_size"] == 2
        r = globex_id.post("/v1/identify", files=probe)
        assert matches(r) == {twin} and candidates(r) == {twin}
        assert r.json()["gallery_size"] == 1
        r = lobby_id.post("/v1/identify", files=probe, data={"top_k": "100"})
        assert candidates(r) == set() and matches(r) == {None}
        assert r.json()["gallery_size"] == 1
        assert matches(lobby_id.post("/v1/identify", files=one_image(HASTERT[3]))) == {hastert}

        # jobs too
        r = globex_id.post("/v1/jobs", files=[("files", one_image(KERRY[4])["image"])])
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        for _ in range(300):
            done = globex_id.get(f"/v1/jobs/{job}").json()
            if done["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert done["status"] == "done", done
        found = {c["subject_id"] for f in done["results"][0]["faces"] for c in f["candidates"]}
        assert found == {twin}

        # admin keys choose the namespace; the others may name only their own
        assert admin.get("/v1/subjects").json()["items"] == []  # its own: "default"
        r = admin.get("/v1/subjects", headers={"X-Namespace": "globex"})
        assert {s["id"] for s in r.json()["items"]} == {twin}
        r = admin.get(f"/v1/subjects/{kerry}", headers={"X-Namespace": "acme"})
        assert r.status_code == 200
        r = globex.get("/v1/subjects", headers={"X-Namespace": "acme"})
        assert (r.status_code, code(r)) == (403, "forbidden")
        assert globex.get("/v1/subjects", headers={"X-Namespace": "globex"}).status_code == 200
        r = admin.get("/v1/subjects", headers={"X-Namespace": 'a" or "1"=="1'})
        assert (r.status_code, code(r)) == (422, "invalid_request")
        r = admin.delete(f"/v1/subjects/{twin}", headers={"X-Namespace": "globex"})
        assert r.status_code == 204
        r = globex_id.post("/v1/identify", files=probe)
        assert matches(r) == {None} and r.json()["gallery_size"] == 0
