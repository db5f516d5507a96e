"""The enrolled faces, kept in step across the system of record (SQL) and the search index.

The invariant, owned here and nowhere else:

- **Enrol** face F of subject S: (a1) the sealed template is written ``pending`` (refused,
  404, when S's row is gone: the foreign key is checked in that transaction); (a2) F's
  protected vector goes to the index; (a3) one conditional ``UPDATE ... RETURNING`` marks
  F ``indexed`` if its row still exists; if it does not, (a4) F's vector is removed and
  the answer is 404. A failed index write removes the row.
- **Delete** S: (d1) S's vectors (a filtered delete on ``subject_id``); (d2) S's row, with
  its data key, in one transaction whose foreign key cascade takes every face row; (d3)
  S's vectors again.

Why a deleted subject leaves nothing behind, whatever the interleaving of any number of
enrolments with its deletion:

- *No row, no data key.* After d2 commits no face of S can be inserted (a1 checks the
  foreign key), and every face committed before it went with the cascade.
- *No vector.* F's vector exists only after a2. If a3 found F's row gone, a4 removes the
  vector, after a2 in the same thread. If a3 found the row, a3 ran before d2 took it
  (on PostgreSQL an UPDATE blocked by d2's cascade re-reads the row and finds it gone; on
  SQLite writers take turns), so a2 had returned before d2 committed, hence before d3
  began: d3's delete reaches Milvus after the upsert was acknowledged, is stamped later,
  and removes it.
- d1 keeps a crash harmless: between d1 and d2 the subject still exists and the start-up
  repair restores its vectors (the delete was never acknowledged); between d2 and d3 the
  vectors left are orphans, which the repair removes, and no search returns them
  meanwhile (hits are kept only for subjects that exist).

``tests/gateway/service/test_gateway_race.py`` runs 32 enrolments against a delete on the
real service and checks SQL and the index afterwards.
- **Repair** (:meth:`Gallery.reconcile`, at start-up before serving): ``pending`` faces
  belong to enrolments that never answered and are rolled back; indexed faces missing from
  the index are restored from their templates; vectors with no record are removed. With
  several processes over one database and one index, a ``pending`` face may belong to an
  enrolment in progress in another process: each face records the process that wrote it,
  and a pending face of a process still alive (:mod:`gateway.storage.processes`) is rolled
  back only once it is older than any enrolment takes; and a vector counts as an orphan
  only when no face row of the running model, in any state, holds its id (read after the
  index).
- **Rebuild and rotation**: the index can always be rebuilt from the sealed templates,
  which is also how it moves to a new protection key without stopping searches.
- **Models**: the index holds only the templates of the running model
  (``index.model_id``, :mod:`gateway.model_ids`); repair, rebuild and rotation read only
  those. **Re-embed** face F (:meth:`Gallery.replace_template`, ``facerec reembed``): (r1)
  F's new vector goes to the running model's collection while F's row still holds the
  old model's template; (r2) one conditional ``UPDATE`` swaps template and model if F's row
  still exists with the old model; if F is gone, (r3) the vector is removed. r1-r3 play the
  parts of a2-a4 against a delete. A crash between r1 and r2 leaves F of the old model and
  an orphan vector the repair removes; after r2 F is complete under the new model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from gateway.errors import ConflictError, NotFoundError
from gateway.index.manager import IndexManager
from gateway.index.milvus import FaceIndex
from gateway.scope import DEFAULT_SCOPE
from gateway.storage.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`Gallery.reconcile` changed."""

    rolled_back: int  # faces written but never confirmed: removed from both stores
    restored: int  # indexed faces missing from the index: re-added from their templates
    orphans: int  # vectors with no face record: removed

    @property
    def changed(self) -> bool:
        return bool(self.rolled_back or self.restored or self.orphans)

    def describe(self) -> str:
        """``rolled_back=N restored=N orphans=N`` (for the audit event)."""
        return f"rolled_back={self.rolled_back} restored={self.restored} orphans={self.orphans}"


class Gallery:
    """Faces of the system of record and their vectors in the index, changed together."""

    def __init__(self, db: Database, index: IndexManager) -> None:
        self.subjects, self.faces, self.model_migration = db.subjects, db.faces, db.model_migration
        self.index = index
        self.model_id = index.model_id  # the model whose templates are indexed

    def close(self) -> None:
        self.index.close()

    # -- enrol and delete -----------------------------------------------------------------
    def add_face(
        self,
        subject_id: str,
        embedding: np.ndarray,
        content_hash: str,
        quality: float,
        box: Sequence[float],
        image: bytes | None = None,
        scope: tuple[str, str] = DEFAULT_SCOPE,
    ) -> str:
        """Enrol one face (embedding float32[D]) of an existing subject, whose
        (namespace, gallery) is ``scope``; returns the face's id. The same image enrolled
        before under another model is re-enrolment: that face moves to this model
        (:meth:`replace_template`) and keeps its id."""
        try:
            face_id = self.faces.add_face(
                subject_id, embedding, content_hash, quality, box, image, self.model_id
            )
        except ConflictError as exc:
            moved = self._reenrol(subject_id, content_hash, embedding, scope)
            if moved is None:
                raise exc from None
            return moved
        try:
            self.index.add([face_id], [subject_id], embedding[None, :], [scope])
        except Exception:
            self.faces.discard_faces([face_id])
            raise
        if not self.faces.mark_indexed([face_id]):
            self.index.delete_faces([face_id])  # the subject was deleted meanwhile
            raise NotFoundError(f"subject {subject_id} was deleted during enrolment")
        return face_id

    def _reenrol(
        self, subject_id: str, content_hash: str, embedding: np.ndarray, scope: tuple[str, str]
    ) -> str | None:
        """The id of the face of the same image moved to this model, or None when that
        face is already of this model (a plain duplicate)."""
        face = self.faces.face_by_hash(subject_id, content_hash)
        if face is None or face.model_id == self.model_id or face.state != "indexed":
            return None
        outcome = self.replace_template(face.id, subject_id, embedding, face.model_id, scope)
        if outcome == "gone":
            raise NotFoundError(f"subject {subject_id} was deleted during enrolment")
        return face.id

    def replace_template(
        self,
        face_id: str,
        subject_id: str,
        embedding: np.ndarray,
        old_model_id: str | None,
        scope: tuple[str, str] = DEFAULT_SCOPE,
    ) -> str:
        """Move face ``face_id`` of ``subject_id`` (scope ``scope``) from a template of
        ``old_model_id`` to ``embedding`` float32[D] of the running model (r1-r3 above).
        Returns ``replaced``, ``gone`` (deleted meanwhile: nothing left behind) or
        ``changed`` (another run moved it first)."""
        self.index.add([face_id], [subject_id], embedding[None, :], [scope])
        try:
            outcome = self.model_migration.replace_template(
                face_id, embedding, self.model_id, old_model_id
            )
        except Exception:
            self.index.delete_faces([face_id])  # the row keeps the old model's template
            raise
        if outcome == "gone":
            self.index.delete_faces([face_id])
        return outcome

    def delete_face(self, subject_id: str, face_id: str) -> None:
        self.faces.delete_face(subject_id, face_id)
        self.index.delete_faces([face_id])

    def delete_subject(self, subject_id: str) -> int:
        """Remove the vectors, then the record with its data key, then any vector written
        meanwhile (d1-d3 above); returns the faces removed."""
        self.subjects.get(subject_id)  # NotFoundError before touching the index
        self.index.delete_subject(subject_id)
        faces = self.subjects.delete(subject_id)
        self.index.delete_subject(subject_id)
        return len(faces)

    # -- repair, rebuild, rotation ----------------------------------------------------------
    def reconcile(
        self, live: Collection[str] | None = None, pending_before: datetime | None = None
    ) -> Reconciled:
        """Make the index agree with the system of record (at start-up, before serving,
        and now and then in a worker). With other processes enrolling meanwhile (``live``:
        the processes alive), a ``pending`` face that a live process wrote after
        ``pending_before`` is an enrolment in progress and is left alone; and what is read
        is read in an order that no enrolment in progress can fool: the indexed faces,
        then the index, then every face row (a vector found in the index has had its row
        written before it, so a vector is an orphan only when no row of this model holds
        its id)."""
        current, nxt = self.index.collections()
        pending = self.faces.pending_face_ids(live, pending_before)
        for index in (current, nxt):
            if index is not None:
                index.delete_faces(pending)
        self.faces.discard_faces(pending)
        indexed = self.faces.indexed_face_ids(self.model_id)
        if not pending and current.count() == len(indexed):
            return Reconciled(0, 0, 0)  # the usual case: nothing to compare id by id
        present = current.ids()
        orphans = sorted(present - self.faces.face_ids(self.model_id))
        current.delete_faces(orphans)
        missing = indexed - present
        if missing:
            self.rebuild(current, only=missing)
        if pending or orphans or missing:
            log.warning(
                "index repaired: %d rolled back, %d restored, %d orphans removed",
                len(pending),
                len(missing),
                len(orphans),
            )
        return Reconciled(len(pending), len(missing), len(orphans))

    def rebuild(
        self,
        index: FaceIndex,
        progress: Callable[[int], None] | None = None,
        only: set[str] | None = None,
    ) -> int:
        """Upsert every indexed template of the system of record (or those of ``only``)
        into ``index``; returns how many."""
        indexed = self.faces.indexed_face_ids(self.model_id) if only is None else only
        scopes = self.subjects.scopes()
        batch_ids: list[str] = []
        batch_subjects: list[str] = []
        batch_vectors: list[np.ndarray] = []
        total = 0

        def flush() -> None:
            nonlocal total
            if batch_ids:
                batch_scopes = [scopes.get(s, DEFAULT_SCOPE) for s in batch_subjects]
                index.add(batch_ids, batch_subjects, np.stack(batch_vectors), batch_scopes)
                total += len(batch_ids)
                if progress is not None:
                    progress(len(batch_ids))
                batch_ids.clear()
                batch_subjects.clear()
                batch_vectors.clear()

        for face_id, subject_id, vector in self.faces.templates(model_id=self.model_id):
            if face_id in indexed:
                batch_ids.append(face_id)
                batch_subjects.append(subject_id)
                batch_vectors.append(vector)
                if len(batch_ids) >= 1000:
                    flush()
        flush()
        return total

    def reindex(self) -> int:
        """Empty the current collection and rebuild it; returns the vectors written."""
        current = self.index.current
        current.recreate()
        return self.rebuild(current)

    def rotate_index(self, new_secret: bytes, progress: Callable[[int], None] | None = None) -> int:
        """Move the index to a new protection secret; returns the number of vectors moved.

        Reads never stop: searches use the old collection until the new one is complete.
        """
        old, new = self.index.begin_rotation(new_secret)
        moved = self.rebuild(new, progress)
        self.index.finish_rotation(old, new_secret)
        current = self.index.current  # remove faces deleted while it was being built
        current.delete_faces(sorted(current.ids() - self.faces.face_ids()))
        return moved
