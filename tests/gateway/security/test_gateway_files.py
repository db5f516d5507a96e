"""The data directory on disk, with the real service (``facerec serve``): directories 0700
and files 0600 (SQLite, Milvus Lite, keys, the audit head), also when the directory and
files were there before with looser modes; and the temporary files a crash leaves
between writing and renaming (``audit.<pid>.tmp``) are gone after the next start, while
those of a live process stay."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devkit.servers import storage_env
from gateway.crypto.envelope import MasterKey
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode):
                out[str(path.relative_to(root))] = stat.S_IMODE(st.st_mode)
    return out


def test_data_dir_is_private_and_crash_leftovers_go(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old = data / "from-an-older-version"
    old.mkdir(mode=0o755)
    (old / "notes.txt").write_text("x")
    (old / "notes.txt").chmod(0o644)
    (data / "master.key").write_text(MasterKey.generate().secret.hex())
    (data / "master.key").chmod(0o644)
    stale = [data / f"audit.{dead_pid()}.tmp", data / f"audit.head.{dead_pid()}.tmp"]
    for path in stale:
        path.write_text('{"seq": 1, "mac": "half-writ')
    live = data / f"audit.head.{os.getpid()}.tmp"  # a live process's: not ours to remove
    live.write_text("{}")

    with running_gateway(data, storage_env(storage)) as service:
        with service.client() as c:
            sid = c.post("/v1/subjects", json={"name": "files"}).json()["id"]
            image = sorted(GALLERY.glob("John_Kerry_*.jpg"))[0]
            r = c.post(
                f"/v1/subjects/{sid}/faces", files={"images": (image.name, image.read_bytes())}
            )
            assert r.status_code == 200, r.text
        found = modes(data)  # while it runs
    found.update(modes(data))

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"master.key", "admin.key", "audit.head"} <= set(found)
    if not storage:
        assert {"facerec.sqlite3", "index.db"} <= set(found)
    loose = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (data / name).is_dir() else 0o600)
    }
    assert loose == {}, loose
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert sorted(p.name for p in data.glob("*.tmp")) == [live.name]
