"""Which model computed the stored templates, and moving faces to the running model's.

Counts per model (``GET /v1/models``, and why 1:1 refuses a subject enrolled only under
another model), the faces still of another model with their kept enrolment images, and the
one-transaction swap of a face's template (``facerec reembed``, through
:meth:`gateway.gallery.Gallery.replace_template`). A face that records no model is the
published model's (:func:`gateway.storage.faces.recorded_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.crypto.envelope import Keyring, open_image, seal_template
from gateway.model_ids import published_model_id
from gateway.storage.faces import recorded_model
from gateway.storage.schema import FaceRow, SubjectRow
from gateway.storage.subjects import data_key


@dataclass(frozen=True)
class StoredFace:
    """A face to re-embed: where it was found, and its enrolment image when kept."""

    id: str
    subject_id: str
    model_id: str | None
    box: list[float]
    has_image: bool


def _not_of_model(model_id: str) -> ColumnElement[bool]:
    """Faces whose templates another model than ``model_id`` computed (see
    :func:`gateway.storage.faces.of_model` for faces that record none)."""
    if model_id == published_model_id():
        return FaceRow.model_id != model_id  # SQL: NULL is not "different"
    return or_(FaceRow.model_id != model_id, FaceRow.model_id.is_(None))


def _same_model(model_id: str | None) -> ColumnElement[bool]:
    """Faces of ``model_id`` (None: faces that record no model)."""
    return FaceRow.model_id.is_(None) if model_id is None else FaceRow.model_id == model_id


class ModelMigrationRepository:
    """The ``faces`` table by model; each method is one transaction."""

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self.engine, self.keyring = engine, keyring

    def model_counts(self, subject_id: str | None = None) -> dict[str, int]:
        """How many faces each model's templates are (of one subject when given)."""
        with Session(self.engine) as s:
            query = select(FaceRow.model_id, func.count()).group_by(FaceRow.model_id)
            if subject_id is not None:
                query = query.where(FaceRow.subject_id == subject_id)
            return {recorded_model(m): int(n) for m, n in s.execute(query)}

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
            return open_image(data_key(self.keyring, subject), face.image, subject.id, face.id)

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
            key = data_key(self.keyring, subject)
            blob = seal_template(key, embedding, subject.id, face_id)
            done = s.execute(
                update(FaceRow)
                .where(FaceRow.id == face_id, _same_model(old_model_id))
                .values(template=blob, model_id=model_id)
                .returning(FaceRow.id)
            ).first()
            return "replaced" if done is not None else "changed"
