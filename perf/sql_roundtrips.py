"""What one single-statement read costs the gateway's process on PostgreSQL, per way of
holding the connection (the choice behind ``gateway/storage/connections.py``).

    python -m perf.sql_roundtrips --out perf/results/sql_roundtrips

Starts a throwaway PostgreSQL (as the tests do) and reads one row by primary key, as the
API key's check does, ``--reads`` times per variant: SQLAlchemy's pre-ping with the
transaction psycopg opens (what every read cost before), the socket check instead of the
ping (:func:`~gateway.storage.connections.watch_liveness`), the reads engine in autocommit
(:func:`~gateway.storage.connections.read_engine`), and that engine's connections used
through psycopg itself, without a SQLAlchemy statement
(:func:`~gateway.storage.connections.driver_rows`, as the reads every request makes).
Client CPU and wall time per read. Then one audit event appended ``--reads`` times
through :class:`~gateway.storage.audit.AuditRepository`: by the locked path (begin,
advisory lock, read the last event, insert, commit) and by the one conditional statement,
through the driver, that follows this process's own last event. Writes
``sql_roundtrips.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from devkit import servers
from gateway.audit.chain import AuditEvent, chain_event
from gateway.audit.log import utc_timestamp
from gateway.storage.audit import AuditRepository
from gateway.storage.connections import driver_rows, read_engine, watch_liveness
from gateway.storage.schema import open_engine
from perf.common import record, write_json


def _per_read(engine: Engine, reads: int, driver: bool = False) -> dict[str, float]:
    query = text("SELECT v FROM t WHERE id = :id")
    best: dict[str, float] = {}
    for _ in range(3):  # the best of three rounds: this machine's noise is one-sided
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(reads):
            if driver:  # psycopg itself, on a connection of the same pool
                driver_rows(engine, "SELECT v FROM t WHERE id = %(id)s", {"id": "a"})
                continue
            with engine.connect() as c:
                c.execute(query, {"id": "a"}).scalar()
        row = {
            "cpu_us": (time.process_time() - cpu) / reads * 1e6,
            "wall_us": (time.perf_counter() - wall) / reads * 1e6,
        }
        if not best or row["cpu_us"] < best["cpu_us"]:
            best = row
    return {k: round(v, 1) for k, v in best.items()}


def _per_append(repo: AuditRepository, appends: int) -> dict[str, float]:
    key = b"k" * 32

    def follow(last: AuditEvent | None) -> list[AuditEvent]:
        return [chain_event(key, last, action="identify", outcome="no_match", time=utc_timestamp())]

    repo.append(follow)  # the first append reads the last event
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(appends):
        repo.append(follow)
    return {
        "cpu_us": round((time.process_time() - cpu) / appends * 1e6, 1),
        "wall_us": round((time.perf_counter() - wall) / appends * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("perf/results/sql_roundtrips"))
    parser.add_argument("--reads", type=int, default=2000, help="reads per round")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    with servers.postgres_instance(Path(tempfile.mkdtemp(prefix="facerec-sql-"))) as pg:
        setup = create_engine(pg.url)
        with setup.begin() as c:
            c.execute(text("CREATE TABLE t (id text PRIMARY KEY, v int)"))
            c.execute(text("INSERT INTO t VALUES ('a', 1)"))
        setup.dispose()
        ping = create_engine(pg.url, pool_pre_ping=True)
        rows["pre_ping_transaction"] = _per_read(ping, args.reads)
        ping.dispose()
        watched = create_engine(pg.url)
        watch_liveness(watched)
        rows["socket_check_transaction"] = _per_read(watched, args.reads)
        reads = read_engine(watched)
        rows["socket_check_autocommit"] = _per_read(reads, args.reads)
        rows["autocommit_through_the_driver"] = _per_read(reads, args.reads, driver=True)
        reads.dispose()
        watched.dispose()
        engine = open_engine(pg.url)
        appends = {
            "audit_locked_path": _per_append(AuditRepository(engine), args.reads),
            "audit_one_statement": _per_append(
                AuditRepository(engine, read_engine(engine)), args.reads
            ),
        }
        engine.dispose()
    rows.update(appends)
    result = record(reads_per_round=args.reads, per_read=rows)
    write_json(args.out / "sql_roundtrips.json", result)
    for name, row in rows.items():
        print(f"{name:30s} {row['cpu_us']:7.1f} us CPU  {row['wall_us']:7.1f} us wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
