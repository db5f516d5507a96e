"""The bootstrap admin key (``FACEREC_ADMIN_KEY``) on the real service: a new value
replaces the old key at the next start (the old one revoked, the change audited), the same
value changes nothing, and an unusable value (free-form, revoked, another key's id) stops
the start with one line on stderr and no traceback."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.servers import Service, _env, storage_env
from gateway.crypto.envelope import MasterKey
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration


def token() -> str:
    return f"frk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def key_id(tok: str) -> str:
    return tok.split("_")[1]


def serve(data: Path, env: dict[str, str], tok: str) -> AbstractContextManager[Service]:
    (data / "admin.key").write_text(tok)  # what start_gateway's client presents
    return running_gateway(data, {**env, "FACEREC_ADMIN_KEY": tok})


def refused_start(data: Path, env: dict[str, str], value: str) -> str:
    """Run ``facerec serve`` with ``FACEREC_ADMIN_KEY=value``; it must exit 1 at once
    with one line on stderr, which is returned."""
    exe = Path(sys.executable).with_name("facerec")
    done = subprocess.run(
        [str(exe), "serve", "--port", "1"],
        env=_env(data, {**env, "FACEREC_ADMIN_KEY": value}),
        cwd=data.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error ["), done.stderr
    assert value not in lines[0]  # never echo a secret
    return lines[0]


def status(url: str, tok: str) -> tuple[int, str | None]:
    r = httpx.get(f"{url}/v1/keys", headers={"X-API-Key": tok}, timeout=30)
    return r.status_code, (r.json().get("error") or {}).get(
        "code"
    ) if r.status_code >= 400 else None


def test_rotating_the_bootstrap_admin_key(storage: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {
        "FACEREC_ENV": "production",
        "FACEREC_MASTER_KEY": MasterKey.generate().secret.hex(),
        **storage_env(storage),
    }
    first, second = token(), token()

    with serve(data, env, first) as service:
        assert status(service.url, first) == (200, None)
        with service.client() as c:  # an admin key made through the API stays put
            other = c.post("/v1/keys", json={"role": "admin", "label": "ops"}).json()["token"]

    with serve(data, env, second) as service:  # the operator changed FACEREC_ADMIN_KEY
        assert status(service.url, second) == (200, None)
        assert status(service.url, first) == (401, "revoked_api_key")
        assert status(service.url, other) == (200, None)
        with service.client() as c:
            keys = {k["id"]: k for k in c.get("/v1/keys").json()}
            events = c.get("/v1/audit", params={"limit": 1000}).json()["events"]
    assert keys[key_id(first)]["revoked_at"] is not None
    assert keys[key_id(second)]["revoked_at"] is None and keys[key_id(second)]["role"] == "admin"
    boots = [
        (e["role"], e["target"], e["detail"]) for e in events if e["action"] == "bootstrap_key"
    ]
    assert boots == [
        ("system", key_id(first), "created"),
        ("system", key_id(second), f"created; revoked {key_id(first)}"),
    ]

    # the same value again: nothing changes
    with serve(data, env, second) as service, service.client() as c:
        events = c.get("/v1/audit", params={"limit": 1000}).json()["events"]
        assert sum(e["action"] == "bootstrap_key" for e in events) == 2
        assert status(service.url, first) == (401, "revoked_api_key")

    # values the service refuses to start with: one line, no traceback
    line = refused_start(data, env, "my-long-free-form-admin-password")
    assert "FACEREC_ADMIN_KEY" in line and "frk_<id>_<secret>" in line, line
    assert "FACEREC_ADMIN_KEY" in refused_start(data, env, "frk_abc_short")
    line = refused_start(data, env, first)
    assert "revoked" in line and key_id(first) in line, line
    line = refused_start(data, env, f"frk_{key_id(second)}_{secrets.token_urlsafe(32)}")
    assert "not its secret" in line, line
    assert not list(data.glob("*.tmp"))
    assert os.path.exists(data / "audit.head")
