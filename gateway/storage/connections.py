"""PostgreSQL connections that cost one round trip per statement, not four.

A plain read through SQLAlchemy's defaults costs four round trips: the pool's pre-ping
(``SELECT 1``), the ``BEGIN`` psycopg sends before the first statement, the statement, and
the ``ROLLBACK`` that resets the connection when it goes back to the pool. Each costs the
client CPU too: a key lookup took 325 us of CPU, and takes 140 us without them (measured
with ``perf/sql_roundtrips.py``). Two changes take them away:

- :func:`watch_liveness` replaces the pre-ping: an idle connection's socket has nothing to
  read unless the server has sent something on its own, which, for a pooled connection,
  means it is closing it (a restart, a terminated backend). A readable socket at checkout
  is a dead connection, and the pool opens another.
- :func:`read_engine` gives the single-statement reads every request makes (the API key,
  the index's mark, the candidates' templates) an engine in autocommit: one statement is
  its own transaction, with the same snapshot it had inside ``BEGIN``/``ROLLBACK``.

- :func:`driver_rows` runs those few fixed statements (and the audit append that follows
  this process's own) through the driver itself, on a connection of that engine's pool:
  building a statement, finding it in the compiled cache and wrapping its rows cost
  SQLAlchemy more CPU than the round trip (a read by primary key: 185 us through the
  engine, 111 us through the driver; ``perf/sql_roundtrips.py``).

SQLite keeps its engine as it is: its round trips are function calls.
"""

from __future__ import annotations

import select
from collections.abc import Mapping
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError

from gateway.storage.locks import is_postgres

READ_POOL_SIZE = 4  # the reads engine's pool, beside the main engine's (5 + 10 overflow)
READ_POOL_OVERFLOW = 4


def socket_alive(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection looks usable without asking the server: open,
    not broken, and nothing waiting to be read on its socket."""
    if dbapi_connection.closed or getattr(dbapi_connection, "broken", False):
        return False
    try:
        poller = select.poll()  # not select(): a busy process's descriptors pass 1024
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return not poller.poll(0)  # readable, hung up or invalid: not usable
    except (OSError, ValueError):
        return False


def watch_liveness(engine: Engine) -> None:
    """Check each PostgreSQL connection as it leaves the pool with :func:`socket_alive`
    (no round trip); a dead one is replaced (the pool tries three connections)."""

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if not socket_alive(dbapi_connection):
            raise DisconnectionError("the server closed this connection")


def read_engine(engine: Engine) -> Engine:
    """An engine for single-statement reads: on PostgreSQL one in autocommit, with its
    own small pool; elsewhere ``engine`` itself."""
    if not is_postgres(engine):
        return engine
    reads = create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        pool_size=READ_POOL_SIZE,
        max_overflow=READ_POOL_OVERFLOW,
    )
    watch_liveness(reads)
    return reads


def driver_rows(engine: Engine, statement: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of one statement (in the driver's own form: psycopg's ``%(name)s``
    parameters, its types) run on a connection of ``engine``'s pool, as tuples; none for a
    statement that returns no rows. Driver errors come out as SQLAlchemy's, as from
    ``Connection.execute`` (a lost connection is ``OperationalError``, and is not pooled
    again), so that callers handle one family of errors; without the parameters, which
    may be audit events."""
    dialect = engine.dialect
    base_error = dialect.loaded_dbapi.Error
    try:
        proxy = engine.raw_connection()
    except base_error as exc:
        raise DBAPIError.instance(statement, None, exc, base_error, True, dialect=dialect) from exc
    try:
        cursor = proxy.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(statement, params)
            result = cursor.pgresult  # its field count, not ``description``: no column objects
            return list(cursor.fetchall()) if result is not None and result.nfields else []
        finally:
            cursor.close()
    except base_error as exc:
        lost = dialect.is_disconnect(exc, proxy.dbapi_connection, None)
        if lost:
            proxy.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, base_error, True, lost, dialect) from exc
    finally:
        proxy.close()
