"""The search index: protected face vectors in Milvus.

One code path serves Milvus Lite (a local ``.db`` file, the embedded default) and a Milvus
server or cluster (an ``http://host:port`` URI). Only protected vectors are stored (see
:mod:`gateway.crypto.vector_protection`); the collection is named after the protector's key
id, so a key rotation builds a new collection beside the old one and then switches over.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymilvus import DataType, MilvusClient

from facerec.errors import InvalidArgumentError
from gateway.crypto.vector_protection import VectorProtector

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INDEX_TYPES = ("FLAT", "HNSW")


def check_id(value: str, what: str = "id") -> str:
    """Ids reach Milvus filter expressions: only letters, digits, '_' and '-' pass."""
    if not _ID.fullmatch(value):
        raise InvalidArgumentError(f"invalid {what} {value!r}", code="invalid_id")
    return value


DEFAULT_SCOPE = ("default", "default")  # (namespace, gallery) of data from before scopes
SCOPE_FIELDS = ("namespace", "gallery")


def scope_filter(namespace: str | None, gallery: str | None) -> str:
    """The Milvus filter expression limiting a search to a namespace (and a gallery);
    empty for neither. Values are checked like ids, so nothing else reaches the filter."""
    terms = [
        f'{name} == "{check_id(value, name)}"'
        for name, value in (("namespace", namespace), ("gallery", gallery))
        if value is not None
    ]
    return " and ".join(terms)


@dataclass(frozen=True)
class Hit:
    face_id: str
    subject_id: str
    similarity: float


# pymilvus pings idle channels every 10 s; a gRPC server with default keepalive
# enforcement (the Milvus Lite server) answers repeated idle pings with GOAWAY
# "too many pings", and the next call on the shared channel fails. Ping only
# while calls are in flight; an idle channel reconnects on demand.
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False}


class _UnimplementedRpcFilter(logging.Filter):
    """Milvus Lite's server (in this process when embedded) lacks ``AllocTimestamp``,
    which pymilvus's query iterator asks for first and then does without; gRPC logs that
    as an error with a traceback on every start. Drop exactly that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, NotImplementedError) and "not implemented" in str(exc))


logging.getLogger("grpc._server").addFilter(_UnimplementedRpcFilter())


class FaceIndex:
    """Protected vectors of enrolled faces, searchable by cosine similarity."""

    def __init__(
        self,
        uri: str,
        protector: VectorProtector,
        prefix: str = "faces",
        index_type: str = "HNSW",
        token: str | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise InvalidArgumentError(f"index_type must be one of {INDEX_TYPES}")
        self.protector = protector
        self.collection = f"{prefix}_{protector.key_id.replace('-', '_')}"
        self.client = MilvusClient(uri, token=token or "", grpc_options=GRPC_OPTIONS)
        self.index_type = index_type
        self._ensure(index_type)

    def _ensure(self, index_type: str) -> None:
        if self.client.has_collection(self.collection):
            fields = self.client.describe_collection(self.collection)["fields"]
            if set(SCOPE_FIELDS) <= {f["name"] for f in fields}:
                self.client.load_collection(self.collection)
                return
            # A collection from before namespaces: the vectors are rebuilt from the system
            # of record by the start-up repair (or `facerec reindex`).
            log.warning("index %s has no namespace field: recreating it", self.collection)
            self.client.drop_collection(self.collection)
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("subject_id", DataType.VARCHAR, max_length=64)
        for name in SCOPE_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.protector.dim)
        params = self.client.prepare_index_params()
        extra = {"M": 16, "efConstruction": 200} if index_type == "HNSW" else {}
        params.add_index("vector", index_type=index_type, metric_type="COSINE", params=extra)
        self.client.create_collection(self.collection, schema=schema, index_params=params)

    def add(
        self,
        face_ids: Sequence[str],
        subject_ids: Sequence[str],
        embeddings: np.ndarray,
        scopes: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Insert (or replace) faces; ``embeddings`` float32[N, D] unit rows; ``scopes``
        the (namespace, gallery) of each face's subject (default: the default ones)."""
        scopes = [DEFAULT_SCOPE] * len(face_ids) if scopes is None else scopes
        if not (len(face_ids) == len(subject_ids) == len(embeddings) == len(scopes)):
            raise InvalidArgumentError("face_ids, subject_ids and embeddings differ in length")
        if len(face_ids) == 0:
            return
        vectors = self.protector.protect(embeddings)
        rows = [
            {
                "face_id": check_id(f, "face id"),
                "subject_id": check_id(s, "subject id"),
                "namespace": check_id(scope[0], "namespace"),
                "gallery": check_id(scope[1], "gallery"),
                "vector": v.tolist(),
            }
            for f, s, scope, v in zip(face_ids, subject_ids, scopes, vectors, strict=True)
        ]
        self.client.upsert(self.collection, rows)

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 5,
        ef: int = 64,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> list[list[Hit]]:
        """Per probe float32[D], the ``top_k`` best faces (of ``namespace`` and ``gallery``
        when given), best first."""
        if len(embeddings) == 0:
            return []
        probes = self.protector.protect(embeddings)
        found = self.client.search(
            self.collection,
            [p.tolist() for p in probes],
            filter=scope_filter(namespace, gallery),
            limit=top_k,
            output_fields=["subject_id"],
            search_params={"params": {"ef": max(ef, top_k)}},
        )
        return [
            [Hit(h["face_id"], h["entity"]["subject_id"], float(h["distance"])) for h in hits]
            for hits in found
        ]

    def faces_of(self, subject_id: str) -> list[str]:
        rows = self.client.query(
            self.collection,
            filter=f'subject_id == "{check_id(subject_id, "subject id")}"',
            output_fields=["face_id"],
        )
        return sorted(r["face_id"] for r in rows)

    def delete_faces(self, face_ids: Sequence[str]) -> None:
        if face_ids:
            self.client.delete(self.collection, ids=[check_id(f, "face id") for f in face_ids])

    def delete_subject(self, subject_id: str) -> None:
        self.client.delete(
            self.collection, filter=f'subject_id == "{check_id(subject_id, "subject id")}"'
        )

    def count(self) -> int:
        """Live vectors (deleted ones excluded, unlike the collection statistics)."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def drop(self) -> None:
        self.client.drop_collection(self.collection)

    def recreate(self) -> None:
        """Drop the collection and create it empty again (before a full rebuild)."""
        self.drop()
        self._ensure(self.index_type)

    def close(self) -> None:
        self.client.close()

    def ids(self) -> set[str]:
        """Every face id in the collection (for reconciliation with the system of record)."""
        it = self.client.query_iterator(
            self.collection, batch_size=5000, filter='face_id != ""', output_fields=["face_id"]
        )
        found: set[str] = set()
        try:
            while batch := it.next():
                found.update(r["face_id"] for r in batch)
        finally:
            it.close()
        return found
