"""The system of record: one SQL engine and a repository per table group.

SQLite by default, any SQLAlchemy URL (PostgreSQL in the compose deployment) otherwise.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gateway.crypto.envelope import Keyring
from gateway.storage.api_keys import ApiKeyRepository
from gateway.storage.audit import AuditRepository
from gateway.storage.connections import read_engine
from gateway.storage.faces import FaceRepository
from gateway.storage.idempotency import IdempotencyRepository
from gateway.storage.index_marks import IndexMarks
from gateway.storage.jobs import JobRepository
from gateway.storage.maintenance import MaintenanceRepository
from gateway.storage.model_migration import ModelMigrationRepository
from gateway.storage.processes import ProcessRepository, process_name
from gateway.storage.schema import open_engine
from gateway.storage.secrets import SecretRepository
from gateway.storage.streams import StreamRepository
from gateway.storage.subjects import SubjectRepository


class Database:
    """The repositories over one database, sharing one engine and one keyring."""

    def __init__(self, url: str, keyring: Keyring) -> None:
        self.engine = open_engine(url)
        self.reads = read_engine(self.engine)  # the reads every request makes
        self.keyring = keyring
        self.subjects = SubjectRepository(self.engine, keyring)
        self.faces = FaceRepository(self.engine, keyring, process_name(), self.reads)
        self.model_migration = ModelMigrationRepository(self.engine, keyring)
        self.secrets = SecretRepository(self.engine, keyring)
        self.api_keys = ApiKeyRepository(self.engine, self.reads)
        self.idempotency = IdempotencyRepository(self.engine)
        self.audit = AuditRepository(self.engine, self.reads)
        self.jobs = JobRepository(self.engine, keyring)
        self.maintenance = MaintenanceRepository(self.engine)
        self.processes = ProcessRepository(self.engine)
        self.streams = StreamRepository(self.engine)
        self.index_marks = IndexMarks(self.engine, self.reads)

    def rotate_master_key(self) -> int:
        """Re-wrap every data key (subjects', queued jobs') and service secret under the
        keyring's current master key, in one transaction; returns how many changed."""
        with Session(self.engine) as s, s.begin():
            return (
                self.subjects.rewrap_keys(s)
                + self.jobs.rewrap_keys(s)
                + self.secrets.rewrap_keys(s)
            )

    def ping(self) -> None:
        """Raise unless the database answers a query."""
        self.audit.last_seq()
