"""The live search index, its protection key, and moving it to a new key without downtime.

The index protection secret is a service secret in the system of record (wrapped by the
master key). A rotation writes a second secret, ``index.next``; from then on every process
writes each new vector to both collections while searches keep reading the current one.
The rotation builds the new collection from the sealed templates, then makes it current and
drops the old one. Processes notice either change within ``refresh`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.errors import IndexUnavailableError
from gateway.index import FaceIndex, Hit, MilvusOptions
from gateway.keys import MasterKey
from gateway.protect import VectorProtector
from gateway.store import Store

log = logging.getLogger(__name__)

CURRENT = "index"
NEXT = "index.next"


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`IndexManager.reconcile` changed."""

    rolled_back: int  # faces written but never confirmed: removed from both stores
    restored: int  # indexed faces missing from the index: re-added from their templates
    orphans: int  # vectors with no face record: removed


class IndexManager:
    """Vectors for the faces of one system of record, in one Milvus deployment."""

    def __init__(
        self,
        store: Store,
        uri: str,
        dim: int,
        index_type: str = "HNSW",
        options: MilvusOptions | None = None,
        refresh: float = 1.0,
    ) -> None:
        self.store, self.uri, self.dim = store, uri, dim
        self.index_type, self.options, self.refresh = index_type, options, refresh
        self._lock = threading.Lock()
        self._opened: dict[bytes, FaceIndex] = {}
        self._checked = 0.0
        self._current, self._next = self._load()

    # -- which collections --------------------------------------------------------------
    def _open(self, secret: bytes) -> FaceIndex:
        index = self._opened.get(secret)
        if index is None:
            protector = VectorProtector(MasterKey.from_bytes(secret), self.dim)
            index = FaceIndex(self.uri, protector, index_type=self.index_type, options=self.options)
            self._opened[secret] = index
        return index

    def _load(self) -> tuple[FaceIndex, FaceIndex | None]:
        current = self._open(self.store.system_secret(CURRENT))
        nxt = self.store.peek_system_secret(NEXT)
        return current, None if nxt is None else self._open(nxt)

    def _targets(self) -> tuple[FaceIndex, FaceIndex | None]:
        with self._lock:
            if time.monotonic() - self._checked > self.refresh:
                self._current, self._next = self._load()
                self._checked = time.monotonic()
            return self._current, self._next

    @property
    def current(self) -> FaceIndex:
        return self._targets()[0]

    # -- operations -----------------------------------------------------------------------
    def add(
        self, face_ids: Sequence[str], subject_ids: Sequence[str], embeddings: np.ndarray
    ) -> None:
        targets = [index for index in self._targets() if index is not None]
        try:
            for index in targets:
                index.add(face_ids, subject_ids, embeddings)
        except IndexUnavailableError:
            for index in targets:  # the collections written before the failure too
                index.forget(face_ids)
            raise

    def search(self, embeddings: np.ndarray, top_k: int) -> list[list[Hit]]:
        return self.current.search(embeddings, top_k)

    def delete_faces(self, face_ids: Sequence[str]) -> None:
        for index in self._targets():
            if index is not None:
                index.delete_faces(face_ids)

    def delete_subject(self, subject_id: str) -> None:
        for index in self._targets():
            if index is not None:
                index.delete_subject(subject_id)

    def count(self) -> int:
        return self.current.count()

    def close(self) -> None:
        for index in self._opened.values():
            index.close()

    # -- maintenance ------------------------------------------------------------------------
    def rebuild(
        self,
        index: FaceIndex,
        progress: Callable[[int], None] | None = None,
        only: set[str] | None = None,
    ) -> int:
        """Upsert every indexed template of the system of record (or those of ``only``)
        into ``index``; returns how many."""
        indexed = self.store.indexed_face_ids() if only is None else only
        batch_ids: list[str] = []
        batch_subjects: list[str] = []
        batch_vectors: list[np.ndarray] = []
        total = 0

        def flush() -> None:
            nonlocal total
            if batch_ids:
                index.add(batch_ids, batch_subjects, np.stack(batch_vectors))
                total += len(batch_ids)
                if progress is not None:
                    progress(len(batch_ids))
                batch_ids.clear()
                batch_subjects.clear()
                batch_vectors.clear()

        for face_id, subject_id, vector in self.store.templates():
            if face_id in indexed:
                batch_ids.append(face_id)
                batch_subjects.append(subject_id)
                batch_vectors.append(vector)
                if len(batch_ids) >= 1000:
                    flush()
        flush()
        return total

    def reconcile(self) -> Reconciled:
        """Make the index agree with the system of record (run at start-up, before serving).

        Faces still ``pending`` belong to enrolments that never answered: they are rolled
        back. Indexed faces missing from the index are restored; vectors with no record (a
        deletion cut short) are removed.
        """
        current, nxt = self._load()
        pending = [face_id for face_id, _ in self.store.pending_faces()]
        for index in (current, nxt):
            if index is not None:
                index.delete_faces(pending)
        self.store.discard_faces(pending)
        indexed = self.store.indexed_face_ids()
        if not pending and current.count() == len(indexed):
            return Reconciled(0, 0, 0)  # the usual case: nothing to compare id by id
        present = current.ids()
        orphans = sorted(present - indexed)
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

    def rotate(self, new_secret: bytes, progress: Callable[[int], None] | None = None) -> int:
        """Move the index to a new protection secret; returns the number of vectors moved.

        Reads never stop: searches use the old collection until the new one is complete.
        """
        old = self._load()[0]
        self.store.set_system_secret(NEXT, new_secret)
        time.sleep(2 * self.refresh)  # every process now writes to both collections
        new = self._open(new_secret)
        moved = self.rebuild(new, progress)
        self.store.set_system_secret(CURRENT, new_secret)
        self.store.drop_system_secret(NEXT)
        time.sleep(2 * self.refresh)  # every process now reads the new collection
        old.drop()
        self._opened = {k: v for k, v in self._opened.items() if v is not old}
        self._current, self._next = self._load()
        self.reconcile_after_rotation()
        return moved

    def reconcile_after_rotation(self) -> None:
        """Remove vectors of faces deleted while the new collection was being built."""
        current = self._current
        orphans = sorted(current.ids() - self.store.face_ids())
        current.delete_faces(orphans)
