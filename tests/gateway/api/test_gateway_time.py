"""Times keep their instant on both databases: an ``expires_at`` given with any offset is
stored in UTC (SQLite used to keep the wall-clock digits and drop the offset, so a subject
due in an hour at -08:00 was purged at once), and every time comes back with a ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from facerec.pipeline import FacePipeline
from tests.support.apiclient import running, settings_for

PACIFIC = timezone(timedelta(hours=-8))
KIRIBATI = timezone(timedelta(hours=14))


def instant(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def test_expiry_with_offsets_keeps_its_instant(
    storage: dict[str, Any], tmp_path: Path, pipeline: FacePipeline
) -> None:
    settings = settings_for(tmp_path / "data", storage, purge_interval_s=0.3)
    start = datetime.now(UTC).replace(microsecond=0)
    in_an_hour = (start + timedelta(hours=1)).astimezone(PACIFIC)  # digits: 8 h earlier
    a_minute_ago = (start - timedelta(minutes=1)).astimezone(KIRIBATI)  # digits: 14 h later
    naive_in_an_hour = (start + timedelta(hours=1)).replace(tzinfo=None)  # read as UTC
    with running(settings, pipeline) as client:
        made = {}
        for name, when in (
            ("pacific", in_an_hour.isoformat()),
            ("kiribati", a_minute_ago.isoformat()),
            ("naive", naive_in_an_hour.isoformat()),
        ):
            r = client.post("/v1/subjects", json={"name": name, "expires_at": when})
            assert r.status_code == 201, r.text
            made[name] = r.json()

        time.sleep(2.0)  # several purge rounds
        listed = {s["name"]: s for s in client.get("/v1/subjects").json()["items"]}
        assert set(listed) == {"pacific", "naive"}  # only the one really past is purged
        for name, when in (("pacific", in_an_hour), ("kiribati", a_minute_ago)):
            assert instant(made[name]["expires_at"]) == when
            assert abs(instant(made[name]["created_at"]) - start) < timedelta(minutes=5)
        assert instant(listed["pacific"]["expires_at"]) == start + timedelta(hours=1)
        assert instant(listed["naive"]["expires_at"]) == start + timedelta(hours=1)

        # a change keeps the instant too, read back from the database
        later = (start + timedelta(days=2)).astimezone(KIRIBATI)
        r = client.patch(
            f"/v1/subjects/{made['pacific']['id']}", json={"expires_at": later.isoformat()}
        )
        assert r.status_code == 200
        r = client.get(f"/v1/subjects/{made['pacific']['id']}")
        assert instant(r.json()["expires_at"]) == start + timedelta(days=2)

        events = client.get("/v1/audit", params={"limit": 1000}).json()["events"]
        expired = [e for e in events if e["action"] == "expire"]
        assert [e["subject"] for e in expired] == [made["kiribati"]["id"]]
        assert all(e["time"].endswith("Z") for e in events)
        keys = client.get("/v1/keys").json()
        assert keys and all(k["created_at"].endswith("Z") for k in keys)
