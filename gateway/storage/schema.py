"""The SQL schema of the system of record, and how an engine is opened.

SQLite by default, any SQLAlchemy URL (PostgreSQL in the compose deployment) otherwise.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import CursorResult, Dialect, Engine, Result, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE
from gateway.storage.connections import watch_liveness
from gateway.storage.locks import session_lock
from gateway.storage.migrate import migrate


def now() -> datetime:
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC; a value without an offset is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and read back as an aware UTC ``datetime``.

    SQLite has no time zones: SQLAlchemy's ``DateTime`` would store the wall-clock digits
    and drop the offset (``12:00-08:00`` became ``12:00``, due eight hours early), and
    PostgreSQL answers in the session's zone. Here every value is converted to UTC on the
    way in (a value without an offset is taken as UTC) and marked UTC on the way out, so
    both databases keep the instant and comparisons run on one clock.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = to_utc(value)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)


def rowcount(result: Result[Any]) -> int:
    """Rows an ``UPDATE`` or ``DELETE`` run through a session changed."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class SubjectRow(Base):
    __tablename__ = "subjects"
    __table_args__ = (Index("ix_subjects_scope", "namespace", "gallery"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(256))
    # the tenant that owns it, and the gallery within that tenant (added in 0.2)
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    gallery: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_GALLERY, server_default=DEFAULT_GALLERY
    )
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dek_key_id: Mapped[str] = mapped_column(String(64))
    dek_blob: Mapped[bytes] = mapped_column(LargeBinary)
    faces: Mapped[list[FaceRow]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class FaceRow(Base):
    __tablename__ = "faces"
    __table_args__ = (UniqueConstraint("subject_id", "content_hash"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    template: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[str] = mapped_column(String(64))
    quality: Mapped[float] = mapped_column(Float)
    box: Mapped[list[float]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    image: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # sealed, opt-in
    # the identity (name:sha) of the model that computed the template (gateway.model_ids);
    # added with model selection, rows from before get the published model's (migrate)
    model_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    # the process that wrote it (gateway.storage.processes): a ``pending`` face of a live
    # process is an enrolment in progress, one of a dead process is rolled back
    writer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    subject: Mapped[SubjectRow] = relationship(back_populates="faces")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # made from FACEREC_ADMIN_KEY: replaced (revoked) when that setting changes
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the tenant the key acts for, and the one gallery it is limited to (None: all)
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    gallery: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(String)  # canonical JSON of the AuditEvent


class SystemKeyRow(Base):
    """A service secret (audit chain key, API-key pepper, index protection seed), stored
    wrapped by the master key like a data key, so it survives master-key rotation."""

    __tablename__ = "system_keys"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class RequestRow(Base):
    """Idempotency keys of mutating requests: the request's fingerprint, and once it
    succeeded its response (sealed), which a replay gets back."""

    __tablename__ = "requests"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    # Added with replayable responses; rows from before have none and stay refused.
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: in progress
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class JobRow(Base):
    """A job of the durable queue (:mod:`gateway.storage.jobs`): its state, who may see
    it, and the lease of the worker running it."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # uploading | queued | running | done | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # results of jobs from before job_results existed (new jobs keep theirs per image)
    results: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # -- the durable queue (added with replicas; old rows are finished or failed) ---------
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    input_pixels: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)  # a worker's name
    lease: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its claim's token
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    turn_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # served
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the job's data key, wrapped by the master key; gone with the inputs (crypto-shred)
    dek_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dek_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class JobInputRow(Base):
    """One input image of a queued job, sealed with the job's data key; deleted when the
    job ends."""

    __tablename__ = "job_inputs"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobResultRow(Base):
    """The result of one input image of a job: written once (its primary key), in the
    transaction that checks the writer still holds the job's lease."""

    __tablename__ = "job_results"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class StreamRow(Base):
    """A server-side stream (``POST /v1/streams``): what it runs, who started it, and the
    worker running it under a lease (:mod:`gateway.storage.streams`)."""

    __tablename__ = "streams"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    namespace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gallery: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label: Mapped[str] = mapped_column(String(256), default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # every, fpir, ...
    source: Mapped[bytes] = mapped_column(LargeBinary)  # sealed: it may hold credentials
    shown_source: Mapped[str] = mapped_column(String(2048))  # the password masked
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    desired: Mapped[str] = mapped_column(String(16), default="run")  # run | stop
    # pending | connecting | streaming | reconnecting | ended | failed
    state: Mapped[str] = mapped_column(String(16), default="pending")
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # fps, processed, ...
    last_error: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    events: Mapped[int] = mapped_column(Integer, default=0)  # the latest event's seq
    claims: Mapped[int] = mapped_column(Integer, default=0)  # workers that took it, in all


class StreamEventRow(Base):
    """One event of a stream, as its readers get it; the newest ones kept."""

    __tablename__ = "stream_events"
    stream_id: Mapped[str] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class ProcessRow(Base):
    """A running gateway process (API replica, worker, or both), with its heartbeat."""

    __tablename__ = "processes"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    roles: Mapped[str] = mapped_column(String(64), default="")  # api, worker
    version: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class IndexMarkRow(Base):
    """The latest acknowledged Milvus write per collection (gateway.storage.index_marks)."""

    __tablename__ = "index_marks"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, default=0)


class MaintenanceRow(Base):
    """When a deployment-wide task (the start-up repair) last ran, and in which process,
    so that replicas starting together run it once."""

    __tablename__ = "maintenance"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    by: Mapped[str] = mapped_column(String(128), default="")
    runs: Mapped[int] = mapped_column(Integer, default=0)


def _sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            # Deleted rows are overwritten, so a shredded data key leaves no bytes behind.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()


def open_engine(url: str) -> Engine:
    """An engine with the schema created or upgraded (:mod:`.migrate`, one process at a
    time); SQLite gets WAL, foreign keys and secure delete. PostgreSQL's connections are
    checked as they leave the pool without a round trip (:func:`watch_liveness`)."""
    postgres = make_url(url).get_backend_name() == "postgresql"
    engine = create_engine(url, pool_pre_ping=not postgres)
    if postgres:
        watch_liveness(engine)
    _sqlite_pragmas(engine)
    with session_lock(engine, "schema"):  # replicas starting together take turns
        Base.metadata.create_all(engine)
        migrate(engine, Base.metadata)
    return engine
