"""The system of record: subjects, sealed templates, API keys and the audit log, in SQL.

SQLite by default, any SQLAlchemy URL (PostgreSQL in the compose deployment) otherwise.
Templates are stored only sealed (:mod:`gateway.crypto.envelope`); each subject row holds its own
wrapped data key, so deleting the subject destroys the only way to open its templates.
A face is written ``pending`` before its vector reaches the index and marked ``indexed``
after, so a crash in between leaves a row that start-up repair can finish or undo.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from gateway.audit.chain import AuditEvent, chain_event
from gateway.crypto.envelope import (
    Keyring,
    WrappedKey,
    new_data_key,
    open_template,
    seal_image,
    seal_template,
)
from gateway.errors import ConflictError, NotFoundError
from gateway.storage.schema import (
    ApiKeyRow,
    AuditRow,
    FaceRow,
    RequestRow,
    SubjectRow,
    SystemKeyRow,
    new_id,
    now,
    open_engine,
)

UNSET: Any = object()


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    meta: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    faces: int


@dataclass(frozen=True)
class FaceInfo:
    id: str
    subject_id: str
    quality: float
    box: list[float]
    state: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    role: str
    digest: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


def _subject(row: SubjectRow, faces: int) -> Subject:
    return Subject(row.id, row.name, dict(row.meta), row.created_at, row.expires_at, faces)


def _face(row: FaceRow) -> FaceInfo:
    return FaceInfo(row.id, row.subject_id, row.quality, list(row.box), row.state, row.created_at)


def _face_count(s: Session, subject_id: str) -> int:
    return int(s.scalar(select(func.count()).where(FaceRow.subject_id == subject_id)) or 0)


class Store:
    """Typed operations on the system of record; each method is one transaction."""

    def __init__(self, url: str, keyring: Keyring) -> None:
        self.engine = open_engine(url)
        self.keyring = keyring
        self._audit_lock = threading.Lock()

    # -- subjects ---------------------------------------------------------------------
    def create_subject(
        self, name: str, meta: dict[str, Any] | None = None, expires_at: datetime | None = None
    ) -> Subject:
        subject_id = new_id()
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
            return _subject(row, 0)

    def get_subject(self, subject_id: str) -> Subject:
        with Session(self.engine) as s:
            row = s.get(SubjectRow, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
            return _subject(row, _face_count(s, subject_id))

    def update_subject(
        self,
        subject_id: str,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        expires_at: datetime | None = UNSET,
    ) -> Subject:
        """Change the given fields (``expires_at=None`` clears an expiry)."""
        with Session(self.engine) as s, s.begin():
            row = s.get(SubjectRow, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
            if name is not None:
                row.name = name
            if meta is not None:
                row.meta = meta
            if expires_at is not UNSET:
                row.expires_at = expires_at
            s.flush()
            return _subject(row, _face_count(s, subject_id))

    def list_subjects(self, offset: int = 0, limit: int = 50) -> tuple[list[Subject], int]:
        """One page of subjects, oldest first, and the total number of subjects."""
        with Session(self.engine) as s:
            counts = (
                select(FaceRow.subject_id, func.count().label("n"))
                .group_by(FaceRow.subject_id)
                .subquery()
            )
            rows = s.execute(
                select(SubjectRow, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.subject_id == SubjectRow.id)
                .order_by(SubjectRow.created_at, SubjectRow.id)
                .offset(offset)
                .limit(limit)
            )
            page = [_subject(r, int(n)) for r, n in rows]
            total = int(s.scalar(select(func.count()).select_from(SubjectRow)) or 0)
            return page, total

    def subject_names(self, subject_ids: Sequence[str]) -> dict[str, str]:
        """Names of the subjects that exist among ``subject_ids``."""
        if not subject_ids:
            return {}
        with Session(self.engine) as s:
            rows = s.execute(
                select(SubjectRow.id, SubjectRow.name).where(SubjectRow.id.in_(set(subject_ids)))
            )
            return {r[0]: r[1] for r in rows}

    def faces(self, subject_id: str) -> list[FaceInfo]:
        with Session(self.engine) as s:
            rows = s.scalars(
                select(FaceRow)
                .where(FaceRow.subject_id == subject_id)
                .order_by(FaceRow.created_at, FaceRow.id)
            )
            return [_face(r) for r in rows]

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

    def expired_subjects(self, at: datetime | None = None) -> list[str]:
        with Session(self.engine) as s:
            rows = s.scalars(select(SubjectRow.id).where(SubjectRow.expires_at <= (at or now())))
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
        image: bytes | None = None,
    ) -> str:
        """Store a sealed template as ``pending``; returns the face id. The same image
        twice for one subject is a :class:`ConflictError` (``duplicate_face``). ``image``
        (the upload) is kept, sealed, only when given."""
        face_id = new_id()
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(SubjectRow, subject_id)
                if row is None:
                    raise NotFoundError(f"no subject {subject_id}", subject_id=subject_id)
                key = self._data_key(row)
                blob = seal_template(key, embedding, subject_id, face_id)
                sealed_image = (
                    None if image is None else seal_image(key, image, subject_id, face_id)
                )
                s.add(
                    FaceRow(
                        id=face_id,
                        subject_id=subject_id,
                        template=blob,
                        content_hash=content_hash,
                        quality=float(quality),
                        box=[float(v) for v in box],
                        state="pending",
                        image=sealed_image,
                    )
                )
        except SqlIntegrityError:
            raise ConflictError(
                "this image is already enrolled for this subject", code="duplicate_face"
            ) from None
        return face_id

    def mark_indexed(self, face_ids: Sequence[str]) -> set[str]:
        """Mark faces indexed; returns those still present (a concurrent delete may have
        removed the others, whose vectors the caller must then remove)."""
        with Session(self.engine) as s, s.begin():
            marked = set()
            for row in s.scalars(select(FaceRow).where(FaceRow.id.in_(list(face_ids)))):
                row.state = "indexed"
                marked.add(row.id)
            return marked

    def discard_faces(self, face_ids: Sequence[str]) -> None:
        """Remove face rows (a rolled-back enrolment)."""
        if not face_ids:
            return
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(FaceRow).where(FaceRow.id.in_(list(face_ids)))):
                s.delete(row)
        self._flush_deleted()

    def face_ids(self) -> set[str]:
        """Every face id, pending or indexed."""
        with Session(self.engine) as s:
            return set(s.scalars(select(FaceRow.id)))

    def indexed_face_ids(self) -> set[str]:
        with Session(self.engine) as s:
            return set(s.scalars(select(FaceRow.id).where(FaceRow.state == "indexed")))

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
        self._flush_deleted()

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
        """Re-wrap every data key and service secret under the keyring's current master
        key; returns how many changed."""
        changed = 0
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(SubjectRow)):
                old = WrappedKey(row.dek_key_id, row.dek_blob)
                new = self.keyring.rewrap(old, row.id)
                if new != old:
                    row.dek_key_id, row.dek_blob = new.key_id, new.blob
                    changed += 1
            for srow in s.scalars(select(SystemKeyRow)):
                old = WrappedKey(srow.key_id, srow.blob)
                new = self.keyring.rewrap(old, _system_aad(srow.name))
                if new != old:
                    srow.key_id, srow.blob, srow.updated_at = new.key_id, new.blob, now()
                    changed += 1
        return changed

    # -- service secrets --------------------------------------------------------------
    def system_secret(self, name: str, make: Callable[[], bytes] = new_data_key) -> bytes:
        """The secret ``name``, created (by ``make``) and stored wrapped on first use."""
        with Session(self.engine) as s:
            row = s.get(SystemKeyRow, name)
            if row is not None:
                return self.keyring.unwrap(WrappedKey(row.key_id, row.blob), _system_aad(name))
        wrapped = self.keyring.wrap(make(), _system_aad(name))
        try:
            with Session(self.engine) as s, s.begin():
                s.add(SystemKeyRow(name=name, key_id=wrapped.key_id, blob=wrapped.blob))
        except SqlIntegrityError:
            pass  # another process created it first: use theirs
        return self.system_secret(name, make)

    def peek_system_secret(self, name: str) -> bytes | None:
        """The secret ``name``, or None when there is none (never creates one)."""
        with Session(self.engine) as s:
            row = s.get(SystemKeyRow, name)
            if row is None:
                return None
            return self.keyring.unwrap(WrappedKey(row.key_id, row.blob), _system_aad(name))

    def set_system_secret(self, name: str, secret: bytes) -> None:
        wrapped = self.keyring.wrap(secret, _system_aad(name))
        with Session(self.engine) as s, s.begin():
            row = s.get(SystemKeyRow, name)
            if row is None:
                s.add(SystemKeyRow(name=name, key_id=wrapped.key_id, blob=wrapped.blob))
            else:
                row.key_id, row.blob, row.updated_at = wrapped.key_id, wrapped.blob, now()

    def drop_system_secret(self, name: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SystemKeyRow, name)
            if row is not None:
                s.delete(row)

    # -- API keys ---------------------------------------------------------------------
    def add_api_key(self, key_id: str, role: str, digest: str, label: str = "") -> None:
        try:
            with Session(self.engine) as s, s.begin():
                s.add(ApiKeyRow(id=key_id, role=role, digest=digest, label=label))
        except SqlIntegrityError:
            raise ConflictError(f"API key {key_id} exists", code="duplicate_api_key") from None

    def api_key(self, key_id: str) -> ApiKeyInfo | None:
        with Session(self.engine) as s:
            row = s.get(ApiKeyRow, key_id)
            return None if row is None else _api_key(row)

    def api_keys(self) -> list[ApiKeyInfo]:
        with Session(self.engine) as s:
            return [
                _api_key(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            ]

    def revoke_api_key(self, key_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key {key_id}")
            if row.revoked_at is None:
                row.revoked_at = now()

    # -- replays ----------------------------------------------------------------------
    def claim_request(self, key: str) -> None:
        """Record an idempotency key; a second use is a :class:`ConflictError`."""
        try:
            with Session(self.engine) as s, s.begin():
                s.add(RequestRow(key=key))
        except SqlIntegrityError:
            raise ConflictError(
                "this Idempotency-Key was already used", code="replayed_request"
            ) from None

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

    def audit_events(self, after: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events with ``seq > after``, oldest first."""
        with Session(self.engine) as s:
            query = select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq)
            if limit is not None:
                query = query.limit(limit)
            return [AuditEvent(**json.loads(r.body)) for r in s.scalars(query)]

    def last_audit_seq(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.max(AuditRow.seq))) or 0)


def _system_aad(name: str) -> str:
    return f"__system__/{name}"


def _api_key(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.role, row.digest, row.label, row.created_at, row.revoked_at)
