"""The live search index: which Milvus collections are in use, under which protection key.

The index protection secret is a service secret in the system of record (wrapped by the
master key). A rotation writes a second secret, ``index.next``; from then on every process
writes each new vector to both collections while searches keep reading the current one.
Once the new collection is built (:meth:`gateway.gallery.Gallery.rotate_index`), it becomes
current and the old one is dropped. Processes notice either change within ``refresh``
seconds.

Every collection of a manager indexes the same :class:`facerec.fusion.IndexSpace` of the
running model's embeddings (``space``: for a fused model its first part only).

The collections hold the vectors of one model only (``model_id``, :mod:`gateway.model_ids`):
each model has its own collection prefix, so vectors of two models are never searched
together. Every process of a deployment runs the same model. The collections of other
models under the same protection key (left by an earlier model) are never searched, but
deletions reach them too, so a deleted face leaves no vector anywhere; a rotation drops
them (their vectors are rebuilt from the record if that model runs again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from pymilvus import MilvusException

from facerec.fusion import IndexSpace
from facerec.matching import Hit
from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.errors import IndexUnavailableError
from gateway.index.milvus import FaceIndex, MilvusOptions, unavailable
from gateway.model_ids import PREFIX, collection_prefix, published_model_id
from gateway.scope import check_id
from gateway.storage.index_marks import IndexMarks
from gateway.storage.secrets import SecretRepository

CURRENT = "index"
NEXT = "index.next"


class IndexManager:
    """The collections of one Milvus deployment: the current one, and the next one while a
    rotation builds it. Writes go to both, searches to the current one."""

    def __init__(
        self,
        secrets: SecretRepository,
        uri: str,
        space: IndexSpace | int,
        index_type: str = "HNSW",
        options: MilvusOptions | None = None,
        refresh: float = 1.0,
        model_id: str | None = None,
        marks: IndexMarks | None = None,
    ) -> None:
        # what the index holds of each embedding; an int: a single model's ``space``-d ones
        self.space = space if isinstance(space, IndexSpace) else IndexSpace.identity(space)
        self.secrets, self.uri, self.dim = secrets, uri, self.space.size
        self.marks = marks  # every replica's writes, for Session reads
        self.model_id = model_id or published_model_id()
        self.prefix = collection_prefix(self.model_id)
        self.index_type, self.options, self.refresh = index_type, options, refresh
        self._lock = threading.Lock()
        self._opened: dict[bytes, FaceIndex] = {}
        self._checked = 0.0
        self._current, self._next = self._load()
        # (current collection, the other models' collections beside it), found on first use
        self._others: tuple[str, list[str]] | None = None

    # -- which collections --------------------------------------------------------------
    def _open(self, secret: bytes) -> FaceIndex:
        index = self._opened.get(secret)
        if index is None:
            protector = VectorProtector(MasterKey.from_bytes(secret), self.dim)
            index = FaceIndex(
                self.uri,
                protector,
                self.prefix,
                index_type=self.index_type,
                options=self.options,
                marks=self.marks,
                space=self.space,
            )
            self._opened[secret] = index
        return index

    def _load(self) -> tuple[FaceIndex, FaceIndex | None]:
        current = self._open(self.secrets.get_or_create(CURRENT))
        nxt = self.secrets.get(NEXT)
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

    def collections(self) -> tuple[FaceIndex, FaceIndex | None]:
        """The current collection and the next one (None outside a rotation), read afresh."""
        return self._load()

    # -- operations -----------------------------------------------------------------------
    def add(
        self,
        face_ids: Sequence[str],
        subject_ids: Sequence[str],
        embeddings: np.ndarray,
        scopes: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        targets = [index for index in self._targets() if index is not None]
        try:
            for index in targets:
                index.add(face_ids, subject_ids, embeddings, scopes)
        except IndexUnavailableError:
            for index in targets:  # the collections written before the failure too
                index.forget(face_ids)
            raise

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> list[list[Hit]]:
        return self.current.search(embeddings, top_k, namespace=namespace, gallery=gallery)

    def delete_faces(self, face_ids: Sequence[str]) -> None:
        for index in self._targets():
            if index is not None:
                index.delete_faces(face_ids)
        if face_ids:
            self._delete_elsewhere(ids=[check_id(f, "face id") for f in face_ids])

    def delete_subject(self, subject_id: str) -> None:
        for index in self._targets():
            if index is not None:
                index.delete_subject(subject_id)
        self._delete_elsewhere(filter=f'subject_id == "{check_id(subject_id, "subject id")}"')

    # -- other models' collections --------------------------------------------------------
    def other_models(self, index: FaceIndex | None = None) -> list[str]:
        """Collections of other models beside ``index`` (default: the current one): named
        with its protection key's id, under another model's prefix. Loaded, so that
        deletions reach them."""
        index = index or self.current
        suffix = index.collection.removeprefix(self.prefix)
        client, timeout = index.client, index.options.timeout
        try:
            names = client.list_collections(timeout=timeout)
            found = sorted(
                n
                for n in names
                if n.startswith(PREFIX) and n.endswith(suffix) and n != index.collection
            )
            for name in found:
                client.load_collection(name, timeout=timeout)
        except (MilvusException, grpc.RpcError) as exc:
            raise unavailable(self.uri, "list collections", exc) from exc
        return found

    def _delete_elsewhere(self, **where: Any) -> None:
        """Delete (``ids=`` or ``filter=``) in the other models' collections too (found
        again after the current collection changed, or one of them went)."""
        current = self.current
        if self._others is None or self._others[0] != current.collection:
            self._others = (current.collection, self.other_models(current))
        client, timeout = current.client, current.options.timeout
        for name in self._others[1]:
            try:
                client.delete(name, timeout=timeout, **where)
            except (MilvusException, grpc.RpcError) as exc:
                try:
                    gone = not client.has_collection(name, timeout=timeout)
                except (MilvusException, grpc.RpcError):
                    gone = False
                if not gone:
                    raise unavailable(self.uri, "remove vectors", exc) from exc
                self._others = None  # dropped by a rotation elsewhere

    def ping(self) -> None:
        """Raise unless Milvus answers."""
        current = self.current
        current.client.has_collection(current.collection)

    def close(self) -> None:
        for index in self._opened.values():
            index.close()

    # -- moving to a new protection key --------------------------------------------------
    def begin_rotation(self, new_secret: bytes) -> tuple[FaceIndex, FaceIndex]:
        """Start writing to a second collection under ``new_secret``; returns (the current
        collection, the new one) once every process writes to both."""
        old = self._load()[0]
        self.secrets.set(NEXT, new_secret)
        time.sleep(2 * self.refresh)  # every process now writes to both collections
        return old, self._open(new_secret)

    def finish_rotation(self, old: FaceIndex, new_secret: bytes) -> None:
        """Make the collection of ``new_secret`` current and drop ``old``."""
        self.secrets.set(CURRENT, new_secret)
        self.secrets.drop(NEXT)
        time.sleep(2 * self.refresh)  # every process now reads the new collection
        others = self.other_models(old)
        old.drop()
        for name in others:  # keyed by the retired secret: rebuilt if that model runs again
            try:
                old.client.drop_collection(name, timeout=old.options.timeout)
            except (MilvusException, grpc.RpcError) as exc:
                raise unavailable(self.uri, "drop a collection", exc) from exc
        self._others = None
        self._opened = {k: v for k, v in self._opened.items() if v is not old}
        self._current, self._next = self._load()
