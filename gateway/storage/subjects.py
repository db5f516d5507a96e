"""Subjects: the people enrolled, each in a tenant scope and with its own data key.

Templates are stored only sealed (:mod:`gateway.crypto.envelope`); each subject row holds
its own wrapped data key, so deleting the subject destroys the only way to open its
templates. Its faces and templates are :mod:`gateway.storage.faces`'; which model computed
them, and moving them to another, :mod:`gateway.storage.model_migration`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.crypto.envelope import Keyring, WrappedKey, new_data_key
from gateway.errors import NotFoundError
from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE, Area, conditions
from gateway.storage.schema import FaceRow, SubjectRow, new_id, now, to_utc

UNSET: Any = object()  # "leave as it is", where None means "clear"
_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])  # any SELECT


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    meta: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    faces: int
    namespace: str = DEFAULT_NAMESPACE  # the tenant it belongs to
    gallery: str = DEFAULT_GALLERY  # the gallery within that tenant

    @property
    def scope(self) -> tuple[str, str]:
        return self.namespace, self.gallery


def _subject(row: SubjectRow, faces: int) -> Subject:
    return Subject(
        row.id,
        row.name,
        dict(row.meta),
        row.created_at,
        row.expires_at,
        faces,
        row.namespace,
        row.gallery,
    )


def in_scope(query: _Q, area: Area) -> _Q:
    """``query`` limited to the subjects within ``area`` (namespace, gallery; None: any)."""
    for field, value in conditions(area):
        query = query.where(getattr(SubjectRow, field) == value)
    return query


def data_key(keyring: Keyring, row: SubjectRow) -> bytes:
    """The subject's data key, unwrapped: it seals and opens its templates and images."""
    return keyring.unwrap(WrappedKey(row.dek_key_id, row.dek_blob), row.id)


def subject_exists(engine: Engine, subject_id: str) -> bool:
    with Session(engine) as s:
        return s.get(SubjectRow, subject_id) is not None


def no_subject(subject_id: str) -> NotFoundError:
    """The error for a subject that does not exist (or is out of the caller's scope)."""
    return NotFoundError(f"no subject {subject_id}", subject_id=subject_id)


def flush_deleted(engine: Engine) -> None:
    """Make deletions final on disk: SQLite's write-ahead log still holds the old pages
    until a checkpoint. (PostgreSQL keeps dead rows until VACUUM.)"""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _face_count(s: Session, subject_id: str) -> int:
    return int(s.scalar(select(func.count()).where(FaceRow.subject_id == subject_id)) or 0)


class SubjectRepository:
    """The ``subjects`` table; each method is one transaction."""

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self.engine, self.keyring = engine, keyring

    def create(
        self,
        name: str,
        meta: dict[str, Any] | None = None,
        expires_at: datetime | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        gallery: str = DEFAULT_GALLERY,
    ) -> Subject:
        subject_id = new_id()
        wrapped = self.keyring.wrap(new_data_key(), subject_id)
        with Session(self.engine) as s, s.begin():
            row = SubjectRow(
                id=subject_id,
                name=name,
                namespace=namespace,
                gallery=gallery,
                meta=meta or {},
                expires_at=None if expires_at is None else to_utc(expires_at),
                dek_key_id=wrapped.key_id,
                dek_blob=wrapped.blob,
            )
            s.add(row)
            s.flush()
            return _subject(row, 0)

    def get(
        self, subject_id: str, namespace: str | None = None, gallery: str | None = None
    ) -> Subject:
        """The subject, when it exists within ``namespace`` and ``gallery`` (None: any).
        The scope is in the query, so a subject out of scope costs the same one query as
        an unknown id: the answer's timing does not tell them apart."""
        with Session(self.engine) as s:
            query = select(SubjectRow).where(SubjectRow.id == subject_id)
            row = s.scalars(in_scope(query, (namespace, gallery))).first()
            if row is None:
                raise no_subject(subject_id)
            return _subject(row, _face_count(s, subject_id))

    def exists(self, subject_id: str) -> bool:
        return subject_exists(self.engine, subject_id)

    def update(
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
                raise no_subject(subject_id)
            if name is not None:
                row.name = name
            if meta is not None:
                row.meta = meta
            if expires_at is not UNSET:
                row.expires_at = None if expires_at is None else to_utc(expires_at)
            s.flush()
            return _subject(row, _face_count(s, subject_id))

    def page(
        self,
        offset: int = 0,
        limit: int = 50,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> tuple[list[Subject], int]:
        """One page of subjects (of ``namespace`` and ``gallery`` when given), oldest
        first, and how many there are."""
        with Session(self.engine) as s:
            counts = (
                select(FaceRow.subject_id, func.count().label("n"))
                .group_by(FaceRow.subject_id)
                .subquery()
            )
            query = (
                select(SubjectRow, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.subject_id == SubjectRow.id)
                .order_by(SubjectRow.created_at, SubjectRow.id)
                .offset(offset)
                .limit(limit)
            )
            rows = s.execute(in_scope(query, (namespace, gallery)))
            page = [_subject(r, int(n)) for r, n in rows]
            count = select(func.count()).select_from(SubjectRow)
            total = int(s.scalar(in_scope(count, (namespace, gallery))) or 0)
            return page, total

    def names(
        self,
        subject_ids: Sequence[str],
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> dict[str, str]:
        """Names of the subjects that exist among ``subject_ids`` (and are in
        ``namespace`` and ``gallery`` when given)."""
        if not subject_ids:
            return {}
        with Session(self.engine) as s:
            query = select(SubjectRow.id, SubjectRow.name).where(
                SubjectRow.id.in_(set(subject_ids))
            )
            rows = s.execute(in_scope(query, (namespace, gallery)))
            return {r[0]: r[1] for r in rows}

    def scopes(self) -> dict[str, tuple[str, str]]:
        """(namespace, gallery) of every subject, by id (to rebuild the index)."""
        with Session(self.engine) as s:
            rows = s.execute(select(SubjectRow.id, SubjectRow.namespace, SubjectRow.gallery))
            return {r[0]: (r[1], r[2]) for r in rows}

    def delete(self, subject_id: str) -> list[str]:
        """Delete a subject with its wrapped data key (crypto-shredding) and its faces;
        returns the deleted face ids, for the index."""
        with self.engine.begin() as conn:
            face_ids = list(
                conn.execute(select(FaceRow.id).where(FaceRow.subject_id == subject_id)).scalars()
            )
            # the foreign key's ON DELETE CASCADE takes every face, those inserted since too
            gone = conn.execute(delete(SubjectRow).where(SubjectRow.id == subject_id))
            if gone.rowcount == 0:
                raise no_subject(subject_id)
        flush_deleted(self.engine)
        return face_ids

    def expired(self, at: datetime | None = None) -> list[str]:
        """Ids of the subjects whose ``expires_at`` has passed."""
        with Session(self.engine) as s:
            rows = s.scalars(select(SubjectRow.id).where(SubjectRow.expires_at <= (at or now())))
            return list(rows)

    def rewrap_keys(self, s: Session) -> int:
        """Re-wrap every data key under the keyring's current master key, inside the
        caller's transaction ``s``; returns how many changed."""
        changed = 0
        for row in s.scalars(select(SubjectRow)):
            old = WrappedKey(row.dek_key_id, row.dek_blob)
            new = self.keyring.rewrap(old, row.id)
            if new != old:
                row.dek_key_id, row.dek_blob = new.key_id, new.blob
                changed += 1
        return changed
