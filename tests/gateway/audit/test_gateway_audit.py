"""What the audit log records beyond requests: the start-up repair (what it changed), on
the real service and both storage configurations; the decision threshold of every verify
and identify (the calibrated default or the caller's own); the key a key operation acted
on. Events written before these fields existed still verify."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.servers import _env, storage_env
from gateway.audit.chain import GENESIS, chain_event, verify_chain
from gateway.bootstrap import open_audit, open_database
from gateway.crypto.envelope import MasterKey
from gateway.settings import Settings
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))
MAKE_CRASH_STATE = """
import sys
import numpy as np
from gateway.bootstrap import open_database, open_gallery
from gateway.settings import Settings

sid, face_id = sys.argv[1:]
rng = np.random.default_rng(0)
vectors = rng.standard_normal((2, 128)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
settings = Settings()
db = open_database(settings)
gallery = open_gallery(settings, db, 128)
db.faces.add_face(sid, vectors[0], "pending-hash", 0.9, [0, 0, 1, 1])
gallery.index.delete_faces([face_id])
gallery.index.add(["0123456789abcdef0123456789abcdef"], [sid], vectors[1:])
gallery.close()
"""


@pytest.mark.integration
def test_start_up_repair_is_audited(storage: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = storage_env(storage)
    with running_gateway(data, env) as service, service.client() as c:
        sid = c.post("/v1/subjects", json={"name": "Kerry"}).json()["id"]
        files = [("images", (p.name, p.read_bytes())) for p in KERRY[:2]]
        enrolled = c.post(f"/v1/subjects/{sid}/faces", files=files).json()["results"]
        r = c.post(
            "/v1/verify",
            data={"subject_id": sid, "threshold": "0.25"},
            files={"image": (KERRY[2].name, KERRY[2].read_bytes())},
        )
        assert r.status_code == 200 and r.json()["threshold"] == 0.25
        r = c.post(
            "/v1/verify",
            data={"subject_id": sid},
            files={"image": (KERRY[3].name, KERRY[3].read_bytes())},
        )
        default = r.json()["threshold"]
        r = c.post(
            "/v1/identify",
            data={"threshold": "0.9"},
            files={"image": (KERRY[4].name, KERRY[4].read_bytes())},
        )
        assert r.status_code == 200
        made = c.post("/v1/keys", json={"role": "verify"}).json()["id"]
        assert c.delete(f"/v1/keys/{made}").status_code == 204
        events = c.get("/v1/audit", params={"limit": 1000}).json()["events"]
    thresholds = [
        (e["action"], e["threshold"]) for e in events if e["action"] in ("verify", "identify")
    ]
    assert thresholds == [("verify", 0.25), ("verify", default), ("identify", 0.9)]
    assert [(e["action"], e["target"]) for e in events if e["action"].startswith("key_")] == [
        ("key_create", service.key.split("_")[1]),  # development mode's admin key
        ("key_create", made),
        ("key_revoke", made),
    ]
    assert not any(e["action"] == "repair" for e in events)  # nothing to repair so far

    # What a crash leaves, made by hand with the service stopped (in another process:
    # Milvus Lite keeps its file locked until the process that opened it ends): a face
    # written but never confirmed, an indexed face whose vector is gone, a vector without
    # a face.
    done = subprocess.run(
        [sys.executable, "-c", MAKE_CRASH_STATE, sid, enrolled[0]["face_id"]],
        env=_env(data, env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    with running_gateway(data, env, log=tmp_path / "restart.log") as service, service.client() as c:
        events = c.get("/v1/audit", params={"limit": 1000}).json()["events"]
        faces = c.get(f"/v1/subjects/{sid}").json()["face_list"]
    repairs = [(e["role"], e["detail"]) for e in events if e["action"] == "repair"]
    assert repairs == [("system", "rolled_back=1 restored=1 orphans=1")]
    assert sorted(f["id"] for f in faces) == sorted(x["face_id"] for x in enrolled)
    settings = Settings(env="development", data_dir=data, **storage)
    assert open_audit(settings, open_database(settings)).verify().ok


def test_events_from_before_the_new_fields_still_verify() -> None:
    """An event as the earlier schema chained it (no threshold/target/detail) keeps its
    chain value: the later fields are covered only when set."""
    key = MasterKey.generate().derive("audit")
    old_body = {
        "seq": 1,
        "time": "2026-11-28T06:00:00.000+00:00",
        "action": "verify",
        "outcome": "match",
        "key_id": "k1",
        "role": "verify",
        "subject": "s1",
        "score": 0.5,
        "request_id": "r1",
        "prev": GENESIS,
    }
    canonical = json.dumps(old_body, sort_keys=True, separators=(",", ":"))
    old_mac = hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    ours = chain_event(key, None, **{k: v for k, v in old_body.items() if k not in ("seq", "prev")})
    assert ours.mac == old_mac
    later = chain_event(key, ours, time="t", action="verify", outcome="match", threshold=0.3)
    assert later.body()["threshold"] == 0.3 and "target" not in later.body()
    assert verify_chain(key, [ours, later]).ok
    import dataclasses

    assert not verify_chain(key, [ours, dataclasses.replace(later, threshold=0.1)]).ok
