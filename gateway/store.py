"""The system of record: subjects, sealed templates, API keys and the audit log, in SQL.

SQLite by default, any SQLAlchemy URL (PostgreSQL in the compose deployment) otherwise.
Templates are stored only sealed (:mod:`gateway.keys`); each subject row holds its own
wrapped data key, so deleting the subject destroys the only way to open its templates.
A face is written ``pending`` before its vector reaches the index and marked ``indexed``
after, so a crash in between leaves a row that start-up repair can finish or undo.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from gateway.audit import AuditEvent, chain_event
from gateway.errors import ConflictError, NotFoundError
from gateway.keys import Keyring, WrappedKey, new_data_key, open_template, seal_template


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class SubjectRow(Base):
    __tablename__ = "subjects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=_new_id)
    name: Mapped[str] = mapped_column(String(256))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dek_key_id: Mapped[str] = mapped_column(String(64))
    dek_blob: Mapped[bytes] = mapped_column(LargeBinary)
    faces: Mapped[list[FaceRow]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class FaceRow(Base):
    __tablename__ = "faces"
    __table_args__ = (UniqueConstraint("subject_id", "content_hash"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=_new_id)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    template: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[str] = mapped_column(String(64))
    quality: Mapped[float] = mapped_column(Float)
    box: Mapped[list[float]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    subject: Mapped[SubjectRow] = relationship(back_populates="faces")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(String)  # canonical JSON of the AuditEvent


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    meta: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    faces: int


def _subject(row: SubjectRow) -> Subject:
    return Subject(row.id, row.name, dict(row.meta), row.created_at, row.expires_at, len(row.faces))


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


class Store:
    """Typed operations on the system of record; each method is one transaction."""

    def __init__(self, url: str, keyring: Keyring) -> None:
        self.engine = create_engine(url)
        _sqlite_pragmas(self.engine)
        Base.metadata.create_all(self.engine)
        self.keyring = keyring
        self._audit_lock = threading.Lock()

    # -- subjects ---------------------------------------------------------------------
    def create_subject(
        self, name: str, meta: dict[str, Any] | None = None, expires_at: datetime | None = None
    ) -> Subject:
        subject_id = _new_id()
        wrapped = self.keyring.wrap(new_data_key(), subject_id)
        with Session(self.engine) as s, s.begin():
            row = SubjectRow(
                id=subject_id,
                name=name,
                meta=meta or {},
                expires_at=expires_at,
                dek_key_id=wrapped.key_id,
                dek_blob=wrapped.blob,
            )
            s.add(row)
            s.flush()
            return _subject(row)

    def get_subject(self, subject_id: str) -> Subject:
        with Session(self.engine) as s:
            row = s.get(SubjectRow, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
            return _subject(row)

    def list_subjects(self, offset: int = 0, limit: int = 50) -> list[Subject]:
        with Session(self.engine) as s:
            rows = s.scalars(
                select(SubjectRow)
                .order_by(SubjectRow.created_at, SubjectRow.id)
                .offset(offset)
                .limit(limit)
            )
            return [_subject(r) for r in rows]

    def delete_subject(self, subject_id: str) -> list[str]:
        """Delete a subject with its wrapped data key (crypto-shredding) and its faces;
        returns the deleted face ids, for the index."""
        with Session(self.engine) as s, s.begin():
            row = s.get(SubjectRow, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
            face_ids = [f.id for f in row.faces]
            s.delete(row)
        self._flush_deleted()
        return face_ids

    def _flush_deleted(self) -> None:
        """Make deletions final on disk: SQLite's write-ahead log still holds the old
        pages until a checkpoint. (PostgreSQL keeps dead rows until VACUUM.)"""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def expired_subjects(self, now: datetime | None = None) -> list[str]:
        with Session(self.engine) as s:
            rows = s.scalars(select(SubjectRow.id).where(SubjectRow.expires_at <= (now or _now())))
            return list(rows)

    # -- faces ------------------------------------------------------------------------
    def _data_key(self, row: SubjectRow) -> bytes:
        return self.keyring.unwrap(WrappedKey(row.dek_key_id, row.dek_blob), row.id)

    def add_face(
        self,
        subject_id: str,
        embedding: np.ndarray,
        content_hash: str,
        quality: float,
        box: Sequence[float],
    ) -> str:
        """Store a sealed template as ``pending``; returns the face id. The same image
        twice for one subject is a :class:`ConflictError` (``duplicate_face``)."""
        face_id = _new_id()
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(SubjectRow, subject_id)
                if row is None:
                    raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
                blob = seal_template(self._data_key(row), embedding, subject_id, face_id)
                s.add(
                    FaceRow(
                        id=face_id,
                        subject_id=subject_id,
                        template=blob,
                        content_hash=content_hash,
                        quality=float(quality),
                        box=[float(v) for v in box],
                        state="pending",
                    )
                )
        except SqlIntegrityError:
            raise ConflictError(
                "this image is already enrolled for this subject", code="duplicate_face"
            ) from None
        return face_id

    def mark_indexed(self, face_ids: Sequence[str]) -> None:
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(FaceRow).where(FaceRow.id.in_(list(face_ids)))):
                row.state = "indexed"

    def pending_faces(self) -> list[tuple[str, str]]:
        """(face id, subject id) of faces written but not confirmed in the index."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(FaceRow.id, FaceRow.subject_id).where(FaceRow.state == "pending")
            )
            return [(r[0], r[1]) for r in rows]

    def delete_face(self, subject_id: str, face_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(FaceRow, face_id)
            if row is None or row.subject_id != subject_id:
                raise NotFoundError(f"no face {face_id} for subject {subject_id}")
            s.delete(row)

    def templates(self, subject_id: str | None = None) -> Iterator[tuple[str, str, np.ndarray]]:
        """(face id, subject id, embedding) of every face, opened (for re-indexing)."""
        with Session(self.engine) as s:
            query = select(SubjectRow)
            if subject_id is not None:
                query = query.where(SubjectRow.id == subject_id)
            for row in s.scalars(query):
                key = self._data_key(row)
                for face in row.faces:
                    yield face.id, row.id, open_template(key, face.template, row.id, face.id)

    def rotate_master_key(self) -> int:
        """Re-wrap every data key under the keyring's current master key."""
        changed = 0
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(SubjectRow)):
                old = WrappedKey(row.dek_key_id, row.dek_blob)
                new = self.keyring.rewrap(old, row.id)
                if new != old:
                    row.dek_key_id, row.dek_blob = new.key_id, new.blob
                    changed += 1
        return changed

    # -- audit ------------------------------------------------------------------------
    def append_audit(self, key: bytes, **values: Any) -> AuditEvent:
        """Chain and store one event.

        Appends from this process are serialised by a lock; another process appending at
        the same moment makes the insert of the same sequence number fail, and this one
        retries with the new last event.
        """
        with self._audit_lock:
            return self._append_audit(key, values)

    def _append_audit(self, key: bytes, values: dict[str, Any]) -> AuditEvent:
        for attempt in range(50):
            try:
                with Session(self.engine) as s, s.begin():
                    last_row = s.scalars(
                        select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)
                    ).first()
                    last = AuditEvent(**json.loads(last_row.body)) if last_row else None
                    event_ = chain_event(key, last, **values)
                    s.add(
                        AuditRow(seq=event_.seq, body=json.dumps(event_.__dict__, sort_keys=True))
                    )
                return event_
            except (SqlIntegrityError, OperationalError):
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise ConflictError("could not append to the audit log", code="audit_contention")

    def audit_events(self) -> list[AuditEvent]:
        with Session(self.engine) as s:
            return [
                AuditEvent(**json.loads(r.body))
                for r in s.scalars(select(AuditRow).order_by(AuditRow.seq))
            ]
