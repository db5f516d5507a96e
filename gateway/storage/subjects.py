"""Subjects and their faces: people, their sealed templates, and each face's index state.

Templates are stored only sealed (:mod:`gateway.crypto.envelope`); each subject row holds
its own wrapped data key, so deleting the subject destroys the only way to open its
templates. A face is written ``pending`` before its vector reaches the index and marked
``indexed`` after (:mod:`gateway.gallery` keeps that order).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.crypto.envelope import (
    Keyring,
    WrappedKey,
    new_data_key,
    open_image,
    open_template,
    seal_image,
    seal_template,
)
from gateway.errors import ConflictError, NotFoundError
from gateway.model_ids import published_model_id
from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE
from gateway.storage.schema import (
    FaceRow,
    SubjectRow,
    new_id,
    now,
    to_utc,
)

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


@dataclass(frozen=True)
class FaceInfo:
    id: str
    subject_id: str
    quality: float
    box: list[float]
    state: str  # pending | indexed
    created_at: datetime
    model_id: str | None = None  # identity of the model that computed the template


@dataclass(frozen=True)
class StoredFace:
    """A face to re-embed: where it was found, and its enrolment image when kept."""

    id: str
    subject_id: str
    model_id: str | None
    box: list[float]
    has_image: bool


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


def _in_scope(query: _Q, namespace: str | None, gallery: str | None) -> _Q:
    """``query`` limited to the subjects of ``namespace`` and ``gallery`` (None: any)."""
    if namespace is not None:
        query = query.where(SubjectRow.namespace == namespace)
    if gallery is not None:
        query = query.where(SubjectRow.gallery == gallery)
    return query


def _of_model(query: _Q, model_id: str | None) -> _Q:
    """``query`` limited to faces whose templates model ``model_id`` computed (None: any).
    A face that records no model is the published model's (written by a release from
    before the column, say during a rolling upgrade, after the start-up backfill)."""
    if model_id is None:
        return query
    if model_id == published_model_id():
        return query.where(or_(FaceRow.model_id == model_id, FaceRow.model_id.is_(None)))
    return query.where(FaceRow.model_id == model_id)


def _not_of_model(model_id: str) -> ColumnElement[bool]:
    """Faces whose templates another model than ``model_id`` computed (see
    :func:`_of_model` for faces that record none)."""
    if model_id == published_model_id():
        return FaceRow.model_id != model_id  # SQL: NULL is not "different"
    return or_(FaceRow.model_id != model_id, FaceRow.model_id.is_(None))


def _recorded_model(value: str | None) -> str:
    """The model a face's template is of, from its ``model_id`` column: a face that records
    none is the published model's (see :func:`_of_model`)."""
    return value or published_model_id()


def _same_model(model_id: str | None) -> ColumnElement[bool]:
    """Faces of ``model_id`` (None: faces that record no model)."""
    return FaceRow.model_id.is_(None) if model_id is None else FaceRow.model_id == model_id


def _face(row: FaceRow) -> FaceInfo:
    model_id = _recorded_model(row.model_id)
    return FaceInfo(
        row.id, row.subject_id, row.quality, list(row.box), row.state, row.created_at, model_id
    )


def _face_count(s: Session, subject_id: str) -> int:
    return int(s.scalar(select(func.count()).where(FaceRow.subject_id == subject_id)) or 0)


def _missing(subject_id: str) -> NotFoundError:
    return NotFoundError(f"no subject {subject_id}", subject_id=subject_id)


class SubjectRepository:
    """The ``subjects`` and ``faces`` tables; each method is one transaction."""

    def __init__(self, engine: Engine, keyring: Keyring, writer: str | None = None) -> None:
        self.engine, self.keyring = engine, keyring
        self.writer = writer  # this process, recorded on the faces it writes

    # -- subjects ---------------------------------------------------------------------
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
            row = s.scalars(_in_scope(query, namespace, gallery)).first()
            if row is None:
                raise _missing(subject_id)
            return _subject(row, _face_count(s, subject_id))

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
                raise _missing(subject_id)
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
            rows = s.execute(_in_scope(query, namespace, gallery))
            page = [_subject(r, int(n)) for r, n in rows]
            count = _in_scope(select(func.count()).select_from(SubjectRow), namespace, gallery)
            total = int(s.scalar(count) or 0)
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
            rows = s.execute(_in_scope(query, namespace, gallery))
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
                raise _missing(subject_id)
        self._flush_deleted()
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

    def _flush_deleted(self) -> None:
        """Make deletions final on disk: SQLite's write-ahead log still holds the old
        pages until a checkpoint. (PostgreSQL keeps dead rows until VACUUM.)"""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- faces ------------------------------------------------------------------------
    def _data_key(self, row: SubjectRow) -> bytes:
        return self.keyring.unwrap(WrappedKey(row.dek_key_id, row.dek_blob), row.id)

    def faces(self, subject_id: str) -> list[FaceInfo]:
        """The faces of one subject, oldest first (pending ones included)."""
        with Session(self.engine) as s:
            rows = s.scalars(
                select(FaceRow)
                .where(FaceRow.subject_id == subject_id)
                .order_by(FaceRow.created_at, FaceRow.id)
            )
            return [_face(r) for r in rows]

    def add_face(
        self,
        subject_id: str,
        embedding: np.ndarray,
        content_hash: str,
        quality: float,
        box: Sequence[float],
        image: bytes | None = None,
        model_id: str | None = None,
    ) -> str:
        """Store a sealed template float32[D] as ``pending``; returns the face id. The same
        image twice for one subject is a :class:`ConflictError` (``duplicate_face``).
        ``image`` (the upload) is kept, sealed, only when given. ``model_id``: the identity
        of the model that computed it (default: the published model's)."""
        face_id = new_id()
        model_id = model_id or published_model_id()
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(SubjectRow, subject_id)
                if row is None:
                    raise _missing(subject_id)
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
                        model_id=model_id,
                        writer=self.writer,
                    )
                )
        except SqlIntegrityError:
            # Either constraint: the subject was deleted since it was read (the foreign
            # key), or this image is already enrolled for it (the unique constraint).
            if not self.exists(subject_id):
                raise _missing(subject_id) from None
            raise ConflictError(
                "this image is already enrolled for this subject", code="duplicate_face"
            ) from None
        return face_id

    def face_by_hash(self, subject_id: str, content_hash: str) -> FaceInfo | None:
        """The face of ``subject_id`` enrolled from the image of sha256 ``content_hash``."""
        with Session(self.engine) as s:
            row = s.scalars(
                select(FaceRow).where(
                    FaceRow.subject_id == subject_id, FaceRow.content_hash == content_hash
                )
            ).first()
            return None if row is None else _face(row)

    def exists(self, subject_id: str) -> bool:
        with Session(self.engine) as s:
            return s.get(SubjectRow, subject_id) is not None

    def mark_indexed(self, face_ids: Sequence[str]) -> set[str]:
        """Mark faces indexed; returns those still present (a concurrent delete may have
        removed the others, whose vectors the caller must then remove).

        One conditional ``UPDATE ... RETURNING``: a row deleted before it (or, on
        PostgreSQL, by a delete it waited for) is simply not returned."""
        if not face_ids:
            return set()
        query = (
            update(FaceRow)
            .where(FaceRow.id.in_(list(face_ids)))
            .values(state="indexed")
            .returning(FaceRow.id)
        )
        with self.engine.begin() as conn:
            return set(conn.execute(query).scalars())

    def discard_faces(self, face_ids: Sequence[str]) -> None:
        """Remove face rows (a rolled-back enrolment)."""
        if not face_ids:
            return
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(FaceRow).where(FaceRow.id.in_(list(face_ids)))):
                s.delete(row)
        self._flush_deleted()

    def delete_face(self, subject_id: str, face_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(FaceRow, face_id)
            if row is None or row.subject_id != subject_id:
                raise NotFoundError(f"no face {face_id} for subject {subject_id}")
            s.delete(row)
        self._flush_deleted()

    def face_ids(self, model_id: str | None = None) -> set[str]:
        """Every face id, pending or indexed (of model ``model_id`` when given)."""
        with Session(self.engine) as s:
            return set(s.scalars(_of_model(select(FaceRow.id), model_id)))

    def indexed_face_ids(self, model_id: str | None = None) -> set[str]:
        """Faces confirmed in the index (of model ``model_id`` when given)."""
        with Session(self.engine) as s:
            query = select(FaceRow.id).where(FaceRow.state == "indexed")
            return set(s.scalars(_of_model(query, model_id)))

    def pending_face_ids(
        self, live: Collection[str] | None = None, before: datetime | None = None
    ) -> list[str]:
        """Faces written but not confirmed in the index. Given the ``live`` processes,
        those a live process wrote after ``before`` are left out: enrolments that may
        still be in progress."""
        with Session(self.engine) as s:
            query = select(FaceRow.id, FaceRow.writer, FaceRow.created_at).where(
                FaceRow.state == "pending"
            )
            return [
                face_id
                for face_id, writer, created in s.execute(query)
                if live is None or writer not in live or (before is not None and created < before)
            ]

    def enrolled_count(
        self,
        namespace: str | None = None,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> int:
        """Subjects with at least one indexed face (the gallery size of 1:N), of
        ``namespace`` and ``gallery`` when given, and of model ``model_id`` when given."""
        with Session(self.engine) as s:
            query = select(func.count(func.distinct(FaceRow.subject_id))).where(
                FaceRow.state == "indexed"
            )
            query = _of_model(query, model_id)
            if namespace is not None or gallery is not None:
                query = _in_scope(
                    query.join(SubjectRow, SubjectRow.id == FaceRow.subject_id), namespace, gallery
                )
            return int(s.scalar(query) or 0)

    def candidate_templates(
        self,
        subject_ids: Sequence[str],
        namespace: str | None = None,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> dict[str, tuple[str, np.ndarray]]:
        """Name and indexed templates float32[K, D] of each of ``subject_ids`` that exists,
        has any and is in ``namespace`` and ``gallery`` when given, opened, in one query
        (the candidates of an identification); only those of model ``model_id`` when
        given.

        The scope and the model are checked on the rows read, not in SQL: with the scope
        in the ``WHERE`` clause SQLite's planner walked the scope index (every subject of
        the tenant) instead of the few primary keys asked for, which made an
        identification at 100,000 subjects 5x slower (``perf/search_scaling.py``, identify
        path)."""
        if not subject_ids:
            return {}
        wanted = sorted(set(subject_ids))
        with Session(self.engine) as s:
            query = (
                select(
                    SubjectRow.id,
                    SubjectRow.name,
                    SubjectRow.namespace,
                    SubjectRow.gallery,
                    SubjectRow.dek_key_id,
                    SubjectRow.dek_blob,
                    FaceRow.id,
                    FaceRow.template,
                    FaceRow.model_id,
                )
                .join(FaceRow, FaceRow.subject_id == SubjectRow.id)
                .where(
                    SubjectRow.id.in_(wanted),
                    FaceRow.subject_id.in_(wanted),  # the planner's way to the faces' index
                    FaceRow.state == "indexed",
                )
            )
            rows = s.execute(query).all()
        keys: dict[str, bytes] = {}
        found: dict[str, tuple[str, list[np.ndarray]]] = {}
        for sid, name, space, group, key_id, blob, face_id, template, model in rows:
            if (namespace is not None and space != namespace) or (
                gallery is not None and group != gallery
            ):
                continue
            if model_id is not None and _recorded_model(model) != model_id:
                continue
            if sid not in keys:
                keys[sid] = self.keyring.unwrap(WrappedKey(key_id, blob), sid)
                found[sid] = (name, [])
            found[sid][1].append(open_template(keys[sid], template, sid, face_id))
        return {sid: (name, np.stack(vectors)) for sid, (name, vectors) in found.items()}

    def templates(
        self, subject_id: str | None = None, model_id: str | None = None
    ) -> Iterator[tuple[str, str, np.ndarray]]:
        """(face id, subject id, embedding float32[D]) of every face (or of one subject's;
        of model ``model_id`` only when given), opened."""
        with Session(self.engine) as s:
            query = select(SubjectRow)
            if subject_id is not None:
                query = query.where(SubjectRow.id == subject_id)
            for row in s.scalars(query):
                key = self._data_key(row)
                for face in row.faces:
                    if model_id is None or _recorded_model(face.model_id) == model_id:
                        yield face.id, row.id, open_template(key, face.template, row.id, face.id)

    # -- models -----------------------------------------------------------------------
    def model_counts(self, subject_id: str | None = None) -> dict[str, int]:
        """How many faces each model's templates are (of one subject when given)."""
        with Session(self.engine) as s:
            query = select(FaceRow.model_id, func.count()).group_by(FaceRow.model_id)
            if subject_id is not None:
                query = query.where(FaceRow.subject_id == subject_id)
            return {_recorded_model(m): int(n) for m, n in s.execute(query)}

    def faces_not_of(self, model_id: str) -> list[StoredFace]:
        """The indexed faces whose templates another model computed, oldest first."""
        with Session(self.engine) as s:
            query = (
                select(
                    FaceRow.id,
                    FaceRow.subject_id,
                    FaceRow.model_id,
                    FaceRow.box,
                    FaceRow.image.is_not(None),
                )
                .where(FaceRow.state == "indexed")
                .where(_not_of_model(model_id))
                .order_by(FaceRow.created_at, FaceRow.id)
            )
            rows = s.execute(query)
            return [StoredFace(i, sid, m, list(b), bool(kept)) for i, sid, m, b, kept in rows]

    def stored_image(self, face_id: str) -> bytes | None:
        """The enrolment image kept with a face, opened; None when none was kept or the
        face is gone."""
        with Session(self.engine) as s:
            face = s.get(FaceRow, face_id)
            if face is None or face.image is None:
                return None
            subject = s.get(SubjectRow, face.subject_id)
            if subject is None:
                return None
            return open_image(self._data_key(subject), face.image, subject.id, face.id)

    def replace_template(
        self, face_id: str, embedding: np.ndarray, model_id: str, old_model_id: str | None
    ) -> str:
        """Replace a face's template float32[D] by one of ``model_id``, if it still exists
        and is still of ``old_model_id``, in one transaction. Returns ``replaced``,
        ``gone`` (the face or its subject was deleted) or ``changed`` (another run
        replaced it first)."""
        with Session(self.engine) as s, s.begin():
            face = s.get(FaceRow, face_id)
            subject = None if face is None else s.get(SubjectRow, face.subject_id)
            if face is None or subject is None:
                return "gone"
            blob = seal_template(self._data_key(subject), embedding, subject.id, face_id)
            done = s.execute(
                update(FaceRow)
                .where(FaceRow.id == face_id, _same_model(old_model_id))
                .values(template=blob, model_id=model_id)
                .returning(FaceRow.id)
            ).first()
            return "replaced" if done is not None else "changed"
