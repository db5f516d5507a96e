"""Names on both databases: control characters (NUL included, which PostgreSQL cannot
store), separators, lone surrogates and bidirectional overrides are refused with
``invalid_request`` and a message naming the character; names are stored in NFC; the
length is bounded after normalisation. Nothing is stored by a refused request."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient


def refused(r: Any, says: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    messages = [error["message"], *(e["msg"] for e in error.get("errors", []))]
    assert error["code"] == "invalid_request" and any(says in m for m in messages), error


def post_raw(client: TestClient, path: str, body: str, method: str = "POST") -> Any:
    """``body`` is JSON text sent as is (escapes like \\u0000 stay escapes)."""
    return client.request(
        method, path, content=body.encode(), headers={"content-type": "application/json"}
    )


def test_names_are_checked_and_normalised(client: TestClient) -> None:
    before = client.get("/v1/subjects").json()
    for body, says in (
        (r'{"name": "Bob\u0000"}', "control character (U+0000)"),
        (r'{"name": "Bob\nSmith"}', "control character (U+000A)"),
        (r'{"name": "\u007f"}', "control character (U+007F)"),
        (r'{"name": "Bob\u2028Smith"}', "line separator (U+2028)"),
        (r'{"name": "\ud800x"}', "lone surrogate"),  # the schema refuses it first
        (r'{"name": "invoice\u202egnp.exe"}', "bidirectional override (U+202E)"),
        (r'{"name": "a\u2067b"}', "bidirectional override (U+2067)"),
        (r'{"name": "   "}', "name is empty"),
        # 200 characters that NFC turns into 400 (U+0958 is a composition exclusion)
        (json.dumps({"name": "\u0958" * 200}), "400 characters long"),
    ):
        refused(post_raw(client, "/v1/subjects", body), says)
    assert client.get("/v1/subjects").json() == before  # nothing stored

    # NFC: a decomposed name is stored composed, so both spellings are one name
    r = client.post("/v1/subjects", json={"name": " Zoe\u0308 Saldan\u0303a "})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["name"] == "Zo\u00eb Salda\u00f1a"
    assert client.get(f"/v1/subjects/{sid}").json()["name"] == "Zo\u00eb Salda\u00f1a"
    # scripts keep what they need: RTL mark, joiners
    for name in ("\u05e9\u05dc\u05d5\u05dd\u200f", "\u0915\u094d\u200d\u0937", "O'Brien-Smith"):
        r = client.post("/v1/subjects", json={"name": name})
        assert r.status_code == 201 and r.json()["name"] == name, r.text

    refused(post_raw(client, f"/v1/subjects/{sid}", r'{"name": "x\u0000"}', "PATCH"), "U+0000")
    refused(post_raw(client, f"/v1/subjects/{sid}", r'{"name": "\u202d"}', "PATCH"), "U+202D")
    assert client.get(f"/v1/subjects/{sid}").json()["name"] == "Zo\u00eb Salda\u00f1a"

    keys = client.get("/v1/keys").json()
    refused(post_raw(client, "/v1/keys", r'{"role": "verify", "label": "kiosk\u0000"}'), "label")
    assert client.get("/v1/keys").json() == keys
    r = client.post("/v1/keys", json={"role": "verify", "label": "Caf\u0065\u0301"})
    assert r.status_code == 201 and r.json()["label"] == "Caf\u00e9"


def test_nul_in_metadata_is_no_server_error(client: TestClient) -> None:
    """Metadata is JSON: a NUL inside it is stored and read back as it was, or refused,
    on both databases, but never a 500."""
    r = post_raw(client, "/v1/subjects", r'{"name": "m", "metadata": {"note": "a\u0000b"}}')
    assert r.status_code in (201, 422), r.text
    if r.status_code == 201:
        got = client.get(f"/v1/subjects/{r.json()['id']}").json()
        assert got["metadata"] == {"note": "a\u0000b"}
