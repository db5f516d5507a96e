"""Bring an existing database up to the current schema, on SQLite and PostgreSQL alike.

``create_all`` makes missing tables but never changes a table that exists. Every column
added to a table since its first release is added here with ``ALTER TABLE ... ADD COLUMN``
(each such column is nullable or has a server default, so existing rows get a value), and
some then get a one-time backfill from older data. It runs at every start and does nothing
when the schema is current; two processes starting at once are fine (the loser of a race
finds the column there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn, MetaData

log = logging.getLogger(__name__)

# Statements run once, right after a column is added (table, column) -> SQL.
BACKFILL = {
    # bootstrap keys were told apart by their label before the column existed
    ("api_keys", "bootstrap"): "UPDATE api_keys SET bootstrap = :yes WHERE label = 'bootstrap'",
}
BACKFILL_PARAMS: dict[str, Any] = {"yes": True}
# Templates from before faces recorded their model were computed by the published model
# (the gateway could run no other). Its identity comes from its packaged card, present
# whichever model runs now.
BACKFILL[("faces", "model_id")] = "UPDATE faces SET model_id = :published WHERE model_id IS NULL"


def _interrupted_jobs(conn: Connection, metadata: MetaData) -> None:
    """Jobs queued or running when the durable queue arrived kept their inputs in the
    old process's memory and disk: they end as the old start-up ended them (a process of
    the earlier release still running one writes its end over this)."""
    jobs = metadata.tables["jobs"]
    conn.execute(
        update(jobs)
        .where(jobs.c.status.in_(["queued", "running"]))
        .values(
            status="failed",
            error={"code": "interrupted", "message": "the service was upgraded"},
            finished_at=datetime.now(UTC),
        )
    )


# Code run once, right after a column is added, where plain SQL cannot bind the values.
BACKFILL_CODE: dict[tuple[str, str], Callable[[Connection, MetaData], None]] = {
    ("jobs", "lease"): _interrupted_jobs,
}


def _params(statement: str) -> dict[str, Any]:
    """The values ``statement`` binds."""
    from gateway.model_ids import published_model_id

    values = {**BACKFILL_PARAMS, "published": published_model_id()}
    return {k: v for k, v in values.items() if f":{k}" in statement}


def migrate(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the columns of ``metadata`` missing from existing tables, and the indexes;
    returns the ``table.column`` names added."""
    added = []
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(f"{table.name}.{column.name} needs a server default")
            ddl = CreateColumn(column).compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
                    backfill = BACKFILL.get((table.name, column.name))
                    if backfill is not None:
                        conn.execute(text(backfill), _params(backfill))
                    code = BACKFILL_CODE.get((table.name, column.name))
                    if code is not None:
                        code(conn, metadata)
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue  # another process added it first
            added.append(f"{table.name}.{column.name}")
        for index in table.indexes:
            try:
                index.create(engine, checkfirst=True)
            except DBAPIError:
                if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                    raise  # not a race with another process creating it
    if added:
        log.warning("database schema upgraded: added %s", ", ".join(added))
    return added
