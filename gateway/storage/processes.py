"""The gateway processes of a deployment (API replicas and workers), each with a heartbeat,
so that any process can tell which others are alive: a ``pending`` face or a lease of a
dead process can be taken back, and operators can see who runs what.

A process's name is unique to one run (``host/pid/random``); it registers at start,
renews ``seen_at`` every few seconds, and removes its row when it stops cleanly. A process
not seen for ``ttl`` seconds counts as dead, and so does one of this host whose pid no
longer runs: a process killed a moment ago (``SIGKILL``, a crash) is dead to the one
restarting in its place, whose start-up repair then takes back what it left half-done.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.storage.schema import ProcessRow, now, rowcount


@cache
def process_name() -> str:
    """This process, as the deployment knows it: ``host/pid/random`` (unique per run,
    even when a restarted container gets the same host name and pid)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@cache
def process_started() -> datetime:
    """When this process was launched (from ``/proc``, before any import), so that
    processes launched together agree on it; the first call's time elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    except (OSError, ValueError, IndexError, StopIteration):
        return now()


def gone_from_this_host(name: str) -> bool:
    """Whether ``name`` (``host/pid/random``) is a process of this host whose pid does not
    run any more. Another host's process, or a pid that runs (even reused), is not."""
    host, _, rest = name.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, under another user
        return False
    return False


class ProcessRepository:
    """The ``processes`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, name: str, roles: str, version: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ProcessRow, name)
            if row is None:
                s.add(ProcessRow(name=name, roles=roles, version=version))
            else:
                row.roles, row.version, row.seen_at = roles, version, now()

    def beat(self, name: str, roles: str, version: str) -> None:
        """Renew ``name``'s heartbeat (registering it again if its row was removed)."""
        with Session(self.engine) as s, s.begin():
            changed = rowcount(
                s.execute(update(ProcessRow).where(ProcessRow.name == name).values(seen_at=now()))
            )
            if not changed:
                s.add(ProcessRow(name=name, roles=roles, version=version))

    def forget(self, name: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(delete(ProcessRow).where(ProcessRow.name == name))

    def live(self, ttl: float) -> set[str]:
        """Names of the processes seen within the last ``ttl`` seconds, but those of this
        host that no longer run."""
        since = now() - timedelta(seconds=ttl)
        with Session(self.engine) as s:
            seen = s.scalars(select(ProcessRow.name).where(ProcessRow.seen_at >= since))
            return {name for name in seen if not gone_from_this_host(name)}

    def prune(self, older_than: float) -> int:
        """Remove processes not seen for ``older_than`` seconds (they died unclean)."""
        since = now() - timedelta(seconds=older_than)
        with Session(self.engine) as s, s.begin():
            result = s.execute(delete(ProcessRow).where(ProcessRow.seen_at < since))
            return rowcount(result)
