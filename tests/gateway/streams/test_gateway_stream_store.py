"""Server-side streams as stored (gateway/storage/streams.py) on a real SQLite file, two
"replicas" being two engines: the limit across them, a claim held under its lease,
events numbered on across a take-over, nothing written after the lease is lost, and the
oldest ended streams forgotten."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.storage.schema import open_engine
from gateway.storage.streams import StreamRepository, TooManyStreamsStored


def stores(tmp_path: Path) -> tuple[StreamRepository, StreamRepository]:
    url = f"sqlite:///{tmp_path / 'streams.sqlite3'}"
    return StreamRepository(open_engine(url)), StreamRepository(open_engine(url))


def create(repo: StreamRepository, limit: int = 2) -> str:
    stream_id = uuid.uuid4().hex
    values = {"label": "", "spec": {}, "source": b"sealed", "shown_source": "rtsp://x"}
    repo.create(stream_id, values, limit)
    time.sleep(0.01)  # distinct creation times
    return stream_id


def test_the_limit_holds_across_replicas_and_ended_streams_are_forgotten(
    tmp_path: Path,
) -> None:
    a, b = stores(tmp_path)
    first, second = create(a), create(b)
    with pytest.raises(TooManyStreamsStored):
        create(a)
    with a.engine.begin() as conn:  # both end
        conn.execute(text("UPDATE streams SET state = 'ended'"))
    third, fourth = create(b), create(a)  # room again; ended ones stay listed ...
    assert {s.id for s in a.all()} == {first, second, third, fourth}
    with a.engine.begin() as conn:
        conn.execute(text("UPDATE streams SET state = 'failed' WHERE id = :i"), {"i": third})
    create(b)  # ... the newest 2 of them: the oldest ended one goes
    assert first not in {s.id for s in a.all()} and second in {s.id for s in a.all()}


def test_a_lease_runs_out_another_worker_goes_on_numbering_and_the_first_writes_nothing(
    tmp_path: Path,
) -> None:
    a, b = stores(tmp_path)
    stream_id = create(a)
    (held,) = a.claim("worker-a", lease_s=1.0, limit=4)
    assert b.claim("worker-b", lease_s=1.0, limit=4) == []  # held
    for seq in (1, 2):
        assert a.publish(held, seq, {"seq": seq, "event": "x"}, keep=1000)
    assert a.beat(held, 1.0, "streaming", {"fps": 5.0}, None) == "run"
    time.sleep(1.2)  # worker a stops renewing
    (taken,) = b.claim("worker-b", lease_s=30, limit=4)
    assert taken.stream.events == 2 and taken.stream.claims == 2
    assert not a.publish(held, 3, {"seq": 3}, keep=1000)  # a's late event is refused
    assert a.beat(held, 30, "streaming", {}, None) is None
    assert b.publish(taken, 3, {"seq": 3, "event": "y"}, keep=1000)
    assert [e["seq"] for e in b.events(stream_id, 0)] == [1, 2, 3]
    b.request_stop(stream_id)
    assert b.beat(taken, 30, "streaming", {}, None) == "stop"
    b.release(taken)
    assert a.get(stream_id).owner is None
    b.delete(stream_id)
    assert b.events(stream_id, 0) == [] and b.all() == []
