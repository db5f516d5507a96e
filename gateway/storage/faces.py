"""Faces: each enrolled face's sealed template, its index state and the gallery's size.

Templates are sealed with their subject's data key (:func:`gateway.storage.subjects.
data_key`). A face is written ``pending`` before its vector reaches the index and marked
``indexed`` after (:mod:`gateway.gallery` keeps that order). Each face records the model
that computed its template (:mod:`gateway.model_ids`); reads can be limited to one model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.crypto.envelope import Keyring, WrappedKey, open_template, seal_image, seal_template
from gateway.errors import ConflictError, NotFoundError
from gateway.model_ids import published_model_id
from gateway.scope import conditions, within
from gateway.storage.connections import driver_rows
from gateway.storage.locks import is_postgres
from gateway.storage.schema import FaceRow, SubjectRow, new_id
from gateway.storage.subjects import (
    data_key,
    flush_deleted,
    in_scope,
    no_subject,
    subject_exists,
)

_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])  # any SELECT


# a search's candidates (:meth:`FaceRepository.candidate_templates`) with their subjects'
# data keys: the subjects by primary key, and their faces by the faces' subject index
_CANDIDATES_PG = (  # every request reads it: psycopg's own text, the ids as an array
    "SELECT s.id, s.name, s.namespace, s.gallery, s.dek_key_id, s.dek_blob,"
    " f.id, f.template, f.model_id"
    " FROM subjects s JOIN faces f ON f.subject_id = s.id"
    " WHERE s.id = ANY(%(ids)s) AND f.subject_id = ANY(%(ids)s) AND f.state = 'indexed'"
)


def _candidates(wanted: list[str]) -> Select[*tuple[Any, ...]]:
    """The same query built for other databases (SQLite)."""
    return (
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


@dataclass(frozen=True)
class FaceInfo:
    id: str
    subject_id: str
    quality: float
    box: list[float]
    state: str  # pending | indexed
    created_at: datetime
    model_id: str | None = None  # identity of the model that computed the template


def of_model(query: _Q, model_id: str | None) -> _Q:
    """``query`` limited to faces whose templates model ``model_id`` computed (None: any).
    A face that records no model is the published model's (written by a release from
    before the column, say during a rolling upgrade, after the start-up backfill)."""
    if model_id is None:
        return query
    if model_id == published_model_id():
        return query.where(or_(FaceRow.model_id == model_id, FaceRow.model_id.is_(None)))
    return query.where(FaceRow.model_id == model_id)


def recorded_model(value: str | None) -> str:
    """The model a face's template is of, from its ``model_id`` column: a face that records
    none is the published model's (see :func:`of_model`)."""
    return value or published_model_id()


def _face(row: FaceRow) -> FaceInfo:
    model_id = recorded_model(row.model_id)
    return FaceInfo(
        row.id, row.subject_id, row.quality, list(row.box), row.state, row.created_at, model_id
    )


class FaceRepository:
    """The ``faces`` table (with the subjects' data keys to seal and open templates); each
    method is one transaction."""

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        writer: str | None = None,
        reads: Engine | None = None,
    ) -> None:
        self.engine, self.keyring = engine, keyring
        self.reads = reads or engine  # single-statement reads (storage/connections.py)
        self.writer = writer  # this process, recorded on the faces it writes

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
                    raise no_subject(subject_id)
                key = data_key(self.keyring, row)
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
            if not subject_exists(self.engine, subject_id):
                raise no_subject(subject_id) from None
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
        flush_deleted(self.engine)

    def delete_face(self, subject_id: str, face_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(FaceRow, face_id)
            if row is None or row.subject_id != subject_id:
                raise NotFoundError(f"no face {face_id} for subject {subject_id}")
            s.delete(row)
        flush_deleted(self.engine)

    def face_ids(self, model_id: str | None = None) -> set[str]:
        """Every face id, pending or indexed (of model ``model_id`` when given)."""
        with Session(self.engine) as s:
            return set(s.scalars(of_model(select(FaceRow.id), model_id)))

    def indexed_face_ids(self, model_id: str | None = None) -> set[str]:
        """Faces confirmed in the index (of model ``model_id`` when given)."""
        with Session(self.engine) as s:
            query = select(FaceRow.id).where(FaceRow.state == "indexed")
            return set(s.scalars(of_model(query, model_id)))

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
            query = of_model(query, model_id)
            area = (namespace, gallery)
            if conditions(area):  # only a scoped count needs the subjects
                query = in_scope(query.join(SubjectRow, SubjectRow.id == FaceRow.subject_id), area)
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
        if is_postgres(self.reads):  # the statement as psycopg takes it (connections.py)
            rows = driver_rows(self.reads, _CANDIDATES_PG, {"ids": wanted})
        else:
            with self.reads.connect() as c:  # one plain query, no ORM unit of work
                rows = list(c.execute(_candidates(wanted)).all())
        keys: dict[str, bytes] = {}
        found: dict[str, tuple[str, list[np.ndarray]]] = {}
        for sid, name, space, group, key_id, blob, face_id, template, model in rows:
            if not within((namespace, gallery), (space, group)):
                continue
            if model_id is not None and recorded_model(model) != model_id:
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
                key = data_key(self.keyring, row)
                for face in row.faces:
                    if model_id is None or recorded_model(face.model_id) == model_id:
                        yield face.id, row.id, open_template(key, face.template, row.id, face.id)
