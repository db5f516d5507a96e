"""Work every deployment needs done once, whichever process does it: the index repair at
start-up (and now and then in workers), the retention purge, pruning idempotency keys, and
each process's heartbeat (:mod:`gateway.storage.processes`).

The repair runs under a database lock; replicas that start together run it once: a
process skips it when another finished one after this process began starting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from facerec import __version__
from gateway.audit.log import AuditLog
from gateway.gallery import Gallery, Reconciled
from gateway.service.admin import SYSTEM
from gateway.storage.database import Database
from gateway.storage.locks import session_lock
from gateway.storage.processes import process_name
from gateway.storage.schema import now

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often a process says it is alive
PROCESS_TTL_S = 30.0  # a process not seen for this long is dead
# A pending face of a live process older than this is rolled back anyway (an enrolment
# holds a face pending for one index write, bounded by FACEREC_MILVUS_TIMEOUT_S).
ENROL_GRACE = timedelta(minutes=5)
REPAIR_EVERY_S = 600.0  # workers repair the index this often


def repair(
    db: Database, gallery: Gallery, audit: AuditLog, unless_since: datetime | None = None
) -> Reconciled | None:
    """Reconcile the index with the system of record under the deployment's repair lock
    (audited when it changed anything); None when another process finished a repair
    after ``unless_since``."""
    with session_lock(db.engine, "repair"):
        last = db.maintenance.last_run("repair")
        if unless_since is not None and last is not None and last > unless_since:
            log.info("the index was repaired by another process at %s", last.isoformat())
            return None
        live = db.processes.live(PROCESS_TTL_S)
        repaired = gallery.reconcile(live, now() - ENROL_GRACE)
        db.maintenance.ran("repair", process_name())
    if repaired.changed:
        audit.append(
            action="repair", outcome="ok", detail=repaired.describe(), **SYSTEM.audit_fields()
        )
    return repaired


class Housekeeping:
    """Per process: a heartbeat thread, and a thread for the periodic tasks of worker
    processes (``tasks``: name -> (interval in seconds, function)), apart so that a long
    repair never delays the heartbeat."""

    def __init__(
        self,
        db: Database,
        roles: str,
        tasks: dict[str, tuple[float, Callable[[], None]]],
        alive_file: Path | None = None,
    ) -> None:
        self.db, self.roles, self.tasks = db, roles, tasks
        self.alive_file = alive_file  # touched with every heartbeat (a health check)
        self.name = process_name()
        self._stop = threading.Event()
        db.processes.register(self.name, roles, __version__)
        self._threads = [
            threading.Thread(target=self._beat, name="heartbeat", daemon=True),
            threading.Thread(target=self._work, name="housekeeping", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.db.processes.beat(self.name, self.roles, __version__)
                if self.alive_file is not None:
                    self.alive_file.touch()
            except Exception:  # the loop must survive a database outage
                log.warning("heartbeat failed", exc_info=True)

    def _work(self) -> None:
        due = {task: time.monotonic() + every for task, (every, _) in self.tasks.items()}
        while self.tasks and not self._stop.wait(1.0):
            for task, (every, work) in self.tasks.items():
                if time.monotonic() < due[task]:
                    continue
                due[task] = time.monotonic() + every
                try:
                    work()
                except Exception:
                    log.exception("%s failed", task)

    def close(self) -> None:
        """Stop, and leave the list of live processes at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        try:
            self.db.processes.forget(self.name)
        except Exception:
            log.warning("could not remove this process from the list", exc_info=True)
