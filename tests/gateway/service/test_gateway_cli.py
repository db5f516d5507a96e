"""The gateway's admin commands on a real data directory: keys, audit verify (and what it
catches), reindex, master-key rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.bootstrap import open_database
from gateway.crypto.envelope import MasterKey
from tests.support.apiclient import image_files, settings_for
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration


def facerec(data: Path, *args: str, **env: str) -> tuple[int, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    if "FACEREC_HOME" in os.environ:
        environ["FACEREC_HOME"] = os.environ["FACEREC_HOME"]
    environ.update(FACEREC_DATA_DIR=str(data), FACEREC_INDEX_TYPE="FLAT", **env)
    exe = Path(sys.executable).with_name("facerec")
    done = subprocess.run(
        [str(exe), *args, "--json"],
        env=environ,
        cwd=data.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_admin_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old = MasterKey.generate()
    prod = {"FACEREC_MASTER_KEY": old.secret.hex()}
    rc, key = facerec(data, "keys", "create", "--role", "admin", "--label", "ci", **prod)
    assert rc == 0 and key["token"].startswith("frk_") and key["role"] == "admin"

    # the service runs in its own process (a Milvus Lite file is locked by the process
    # that opened it), in production mode, with the key created above
    (data / "admin.key").write_text(key["token"])
    paths = sorted(GALLERY.glob("Dennis_Hastert_*.jpg"))
    production = {"FACEREC_ENV": "production", **prod}
    with running_gateway(data, production) as service, service.client() as client:
        sid = client.post("/v1/subjects", json={"name": "Dennis"}).json()["id"]
        r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(paths[:3]))
        assert r.json()["enrolled"] == 3

    rc, report = facerec(data, "audit", "verify", **prod)
    assert rc == 0 and report["ok"] and report["events"] >= 5
    rc, listed = facerec(data, "keys", "list", **prod)
    assert [k["id"] for k in listed["keys"]] == [key["id"]]

    rc, out = facerec(data, "reindex", **prod)
    assert rc == 0 and out["vectors"] == 3
    rc, out = facerec(data, "reindex", "--check", **prod)
    assert rc == 0 and out == {"rolled_back": 0, "restored": 0, "orphans": 0}

    new = MasterKey.generate()
    rotate = {
        "FACEREC_MASTER_KEY": new.secret.hex(),
        "FACEREC_PREVIOUS_MASTER_KEYS": json.dumps([old.secret.hex()]),
    }
    rc, out = facerec(data, "keys", "rotate", **rotate)
    assert rc == 0 and out["vectors_moved"] == 3 and out["rewrapped"] >= 4
    # the old key is no longer needed: the service starts and finds the person
    new_env = {"FACEREC_ENV": "production", "FACEREC_MASTER_KEY": new.secret.hex()}
    with running_gateway(data, new_env) as service, service.client() as client:
        r = client.post(
            "/v1/verify",
            data={"subject_id": sid},
            files={"image": (paths[4].name, paths[4].read_bytes())},
        )
        assert r.status_code == 200 and r.json()["match"] is True
    settings = settings_for(data, {}, master_key=new.secret.hex(), env="production")
    rc, report = facerec(data, "audit", "verify", FACEREC_MASTER_KEY=new.secret.hex())
    assert rc == 0 and report["ok"]

    # tampering: an edited event, then a truncated log
    db = open_database(settings)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_events SET body = replace(body, '\"ok\"', '\"refused\"') "
                "WHERE seq = 2"
            )
        )
    rc, report = facerec(data, "audit", "verify", FACEREC_MASTER_KEY=new.secret.hex())
    assert rc == 1 and report["first_bad_seq"] == 2
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 2"))
    rc, report = facerec(data, "audit", "verify", FACEREC_MASTER_KEY=new.secret.hex())
    assert rc == 1 and "ends before" in report["reason"]
    # a wrong master key refuses to start instead of failing later
    rc, out = facerec(data, "audit", "verify", FACEREC_MASTER_KEY=MasterKey.generate().secret.hex())
    assert rc == 1 and out["error"]["code"] == "unknown_master_key"
