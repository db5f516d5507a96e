"""The search index: protected face vectors in Milvus.

One code path serves Milvus Lite (a local ``.db`` file, the embedded default) and a Milvus
server or cluster (an ``http://host:port`` URI). Only protected vectors are stored (see
:mod:`gateway.crypto.vector_protection`), of the part of each embedding the model indexes
(:class:`facerec.fusion.IndexSpace`, applied on insert and search alike: a fused model's
first part only); the collection is named after the protector's key
id, so a key rotation builds a new collection beside the old one and then switches over.
Each vector carries its subject's namespace and gallery, and searches are filtered by them.

Every Milvus failure (down, unreachable, credentials or certificate refused, timed out)
surfaces as :class:`~gateway.errors.IndexUnavailableError` (503 ``index_unavailable``). A
vector whose write or removal failed is removed before this index serves anything else.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.client import ts_utils

from facerec.errors import InvalidArgumentError
from facerec.fusion import IndexSpace
from facerec.matching import Hit
from gateway.crypto.vector_protection import VectorProtector
from gateway.errors import IndexUnavailableError
from gateway.scope import DEFAULT_SCOPE, SCOPE_FIELDS, check_id, conditions
from gateway.storage.index_marks import IndexMarks

log = logging.getLogger(__name__)

INDEX_TYPES = ("FLAT", "HNSW")
# Milvus Lite (the embedded default) is meant for galleries up to this many faces: its
# search cost grows with the gallery (identify's index+SQL part, 2 busy cores: p50 11 ms at
# 10,000 faces, 27 ms at 30,000, 46 ms at 50,000, 176 ms at 100,000; perf/search_scaling.py
# --backend lite --batch 1000). A Milvus server (FACEREC_MILVUS_URI) stays in milliseconds
# at a million.
LITE_MAX_FACES = 30_000
# Milvus Lite searches rows not yet flushed by brute force, at about 20 us a row here
# (30,000 unflushed faces: 0.6-1 s a search); flushed rows go to sealed, indexed segments.
LITE_FLUSH_ROWS = 1_000
Consistency = Literal["Strong", "Session", "Bounded", "Eventually"]

# HNSW search breadth (at least the number of hits asked for). perf/search_scaling.py at
# 1M protected vectors on Milvus 2.3.5, once compaction had merged the segments: recall@1
# 0.939 at ef 64 (0.998 on a second pass over the same probes), 0.991 at 128, 0.998 at 256,
# for 4.9, 5.2 and 8.1 ms of server CPU per probe; at 100k 0.999 already at 64. 128 is the
# breadth whose first pass reached 0.99.
SEARCH_EF = 128


def scope_filter(namespace: str | None, gallery: str | None) -> str:
    """The Milvus filter expression limiting a search to a namespace (and a gallery);
    empty for neither. Values are checked like ids, so nothing else reaches the filter."""
    terms = [
        f'{name} == "{check_id(value, name)}"' for name, value in conditions((namespace, gallery))
    ]
    return " and ".join(terms)


@dataclass(frozen=True)
class MilvusOptions:
    """How to reach a Milvus server: credentials, TLS, a per-call timeout, and the read
    consistency of searches. Milvus Lite (a file path) uses only ``timeout``.

    ``Session`` (the default) lets a process read its own writes, and, through the
    deployment's write marks in the database (:mod:`gateway.storage.index_marks`), every
    other process's writes acknowledged before the search began; ``Strong`` also sees
    them, but each search waits for Milvus's time tick (200 ms p50 measured on 2.3
    without writes, against 6 ms: perf/milvus_consistency.py). Maintenance reads
    (counts, id lists for repair) are always ``Strong``.
    """

    token: str | None = None  # "user:password", or an API key (Zilliz Cloud)
    user: str | None = None
    password: str | None = None
    ca_file: str | None = None  # TLS (https:// URI): CA or self-signed server certificate
    client_cert_file: str | None = None  # mutual TLS: this client's certificate and key
    client_key_file: str | None = None
    server_name: str | None = None  # TLS: the name to expect in the server certificate
    timeout: float = 10.0  # seconds per call
    consistency: Consistency = "Session"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`pymilvus.MilvusClient` for these options."""
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if self.token:
            kwargs["token"] = self.token
        elif self.user:
            kwargs["token"] = f"{self.user}:{self.password or ''}"
        if self.client_cert_file and self.client_key_file:
            kwargs.update(
                client_pem_path=self.client_cert_file,
                client_key_path=self.client_key_file,
                ca_pem_path=self.ca_file,
            )
        elif self.ca_file:
            kwargs["server_pem_path"] = self.ca_file
        if self.server_name:
            kwargs["server_name"] = self.server_name
        return kwargs


def _rpc_failure(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind a pymilvus exception (its cause chain), if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, grpc.RpcError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def unavailable(uri: str, action: str, exc: BaseException) -> IndexUnavailableError:
    """A one-line, credential-free account of a Milvus failure."""
    where = re.sub(r"//[^/@]*@", "//", uri)  # never echo credentials in a URI
    rpc = _rpc_failure(exc)
    code = rpc.code() if rpc is not None and hasattr(rpc, "code") else None
    details = rpc.details() if rpc is not None and hasattr(rpc, "details") else None
    reason = str(details or getattr(exc, "message", None) or exc).strip()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        message = (
            f"Milvus at {where} refused the credentials (FACEREC_MILVUS_USER and "
            f"FACEREC_MILVUS_PASSWORD, or FACEREC_MILVUS_TOKEN): {reason}"
        )
        return IndexUnavailableError(message, reason="unauthenticated")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        message = f"Milvus at {where} denied the user the right to {action}: {reason}"
        return IndexUnavailableError(message, reason="permission_denied")
    return IndexUnavailableError(f"Milvus at {where} failed to {action}: {reason}")


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


class _RpcTracebackFilter(logging.Filter):
    """pymilvus logs every failed call at ERROR with a full traceback; each failure here
    becomes an ``index_unavailable`` error whose one-line reason the service logs, so an
    outage does not flood the log with one traceback per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "_log_rpc_error"


logging.getLogger("pymilvus.decorators").addFilter(_RpcTracebackFilter())


_lite_warned = threading.Event()  # the gallery-size warning is logged once per process


class FaceIndex:
    """Protected vectors of enrolled faces, searchable by cosine similarity."""

    def __init__(
        self,
        uri: str,
        protector: VectorProtector,
        prefix: str = "faces",
        index_type: str = "HNSW",
        options: MilvusOptions | None = None,
        marks: IndexMarks | None = None,
        space: IndexSpace | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise InvalidArgumentError(f"index_type must be one of {INDEX_TYPES}")
        self.uri = uri
        self.options = options or MilvusOptions()
        self.protector = protector
        # which vector of an embedding is indexed (a fused model's first part only)
        self.space = space or IndexSpace.identity(protector.dim)
        if self.space.size != protector.dim:
            raise InvalidArgumentError(
                f"a {protector.dim}-d protector for an index of {self.space.size}-d vectors"
            )
        self.collection = f"{prefix}_{protector.key_id.replace('-', '_')}"
        self.index_type = index_type
        self.embedded = uri.endswith(".db")  # Milvus Lite, as pymilvus decides
        # the deployment's latest write, shared through the database (a server only: an
        # embedded Milvus Lite file has one process)
        self.marks = None if self.embedded else marks
        self._unsettled: set[str] = set()  # face ids whose vector may linger
        self._lock = threading.Lock()
        # Removals done / seen by a Strong search. On Milvus 2.3 a Session search does not
        # always see this client's own deletes at once (it does its inserts), so searches
        # are Strong from a removal until one Strong search started after it has answered.
        self._removals = self._removals_seen = 0
        with self._call("connect"):
            self.client = MilvusClient(
                uri, grpc_options=GRPC_OPTIONS, **self.options.client_kwargs()
            )
            self._ensure(index_type)
        self._lite_faces = self._unflushed = 0
        if self.embedded:
            self._grown(self.count())  # also flushes what an earlier process left

    @contextmanager
    def _call(self, action: str) -> Iterator[None]:
        """Turn any Milvus failure inside the block into :class:`IndexUnavailableError`."""
        try:
            yield
        except (MilvusException, grpc.RpcError) as exc:
            raise unavailable(self.uri, action, exc) from exc

    def _settle(self) -> None:
        """Remove the vectors of earlier failed writes or removals, before anything else."""
        with self._lock:
            ids = sorted(self._unsettled)
        if ids:
            self.client.delete(self.collection, ids=ids, timeout=self.options.timeout)
            with self._lock:
                self._unsettled.difference_update(ids)
                self._removals += 1
            log.info("removed %d vectors left by failed index calls", len(ids))

    def forget(self, face_ids: Sequence[str]) -> None:
        """Remove these faces' vectors before the next call succeeds (a write whose
        outcome is unknown, a removal that failed)."""
        with self._lock:
            self._unsettled.update(face_ids)

    def _grown(self, added: int) -> None:
        """Milvus Lite only: flush every ``LITE_FLUSH_ROWS`` new faces, and warn once when
        the gallery outgrows what Lite is meant for."""
        if not self.embedded:
            return
        self._lite_faces += added
        self._unflushed += added
        if self._unflushed >= LITE_FLUSH_ROWS:
            self._unflushed = 0
            try:
                with self._call("flush"):
                    self.client.flush(self.collection, timeout=self.options.timeout)
            except IndexUnavailableError as exc:  # the rows are stored: searches are slower
                log.warning("%s", exc.message)
        if self._lite_faces > LITE_MAX_FACES and not _lite_warned.is_set():
            _lite_warned.set()
            log.warning(
                "the gallery holds about %d faces in Milvus Lite, which is meant for up to "
                "%d: each search now takes longer. Set FACEREC_MILVUS_URI to a Milvus server "
                "(deploy/README.md), then run `facerec reindex`.",
                self._lite_faces,
                LITE_MAX_FACES,
            )

    def _ensure(self, index_type: str) -> None:
        timeout = self.options.timeout
        if self.client.has_collection(self.collection, timeout=timeout):
            described = self.client.describe_collection(self.collection, timeout=timeout)
            if set(SCOPE_FIELDS) <= {f["name"] for f in described["fields"]}:
                self.client.load_collection(self.collection, timeout=timeout)
                return
            # A collection from before namespaces: the vectors are rebuilt from the system
            # of record by the start-up repair (or `facerec reindex`).
            log.warning("index %s has no namespace field: recreating it", self.collection)
            self.client.drop_collection(self.collection, timeout=timeout)
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("subject_id", DataType.VARCHAR, max_length=64)
        for name in SCOPE_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.protector.dim)
        params = self.client.prepare_index_params()
        extra = {"M": 16, "efConstruction": 200} if index_type == "HNSW" else {}
        params.add_index("vector", index_type=index_type, metric_type="COSINE", params=extra)
        self.client.create_collection(
            self.collection,
            schema=schema,
            index_params=params,
            consistency_level=self.options.consistency,
            timeout=timeout,
        )

    def add(
        self,
        face_ids: Sequence[str],
        subject_ids: Sequence[str],
        embeddings: np.ndarray,
        scopes: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Insert (or replace) faces; ``embeddings`` float32[N, D] unit rows (the model's
        embeddings: the index keeps their :attr:`space` projection, protected); ``scopes``
        the (namespace, gallery) of each face's subject (default: the default ones)."""
        scopes = [DEFAULT_SCOPE] * len(face_ids) if scopes is None else scopes
        if not (len(face_ids) == len(subject_ids) == len(embeddings) == len(scopes)):
            raise InvalidArgumentError("face_ids, subject_ids and embeddings differ in length")
        if len(face_ids) == 0:
            return
        vectors = self.protector.protect(self.space.project(embeddings))
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
        try:
            with self._call("store vectors"):
                self._settle()
                self.client.upsert(self.collection, rows, timeout=self.options.timeout)
        except IndexUnavailableError:
            self.forget(face_ids)  # written or not: gone before anything else is served
            raise
        self._grown(len(rows))
        if self.marks is not None and self.options.consistency == "Session":
            self.marks.raise_to(self.collection, self._write_stamp())

    def _endpoint(self) -> str:
        """The server address pymilvus keys this collection's last write under, for
        ``Session`` reads (the default database)."""
        return str(self.client._get_connection().server_address)

    def _write_stamp(self) -> int:
        """The timestamp of this process's latest write to the collection (0: none)."""
        return int(ts_utils.get_collection_ts(self.collection, self._endpoint(), "") or 0)

    def _see(self, ts: int) -> None:
        """Make this process's ``Session`` searches wait for writes up to ``ts`` too."""
        if ts > 0:
            ts_utils.update_collection_ts(self.collection, ts, self._endpoint(), "")

    def _removed(self) -> None:
        with self._lock:
            self._removals += 1

    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 5,
        ef: int = SEARCH_EF,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> list[list[Hit]]:
        """Per probe float32[D] (the model's embedding, searched by its :attr:`space`
        projection), the ``top_k`` best faces (of ``namespace`` and ``gallery``
        when given), best first."""
        if len(embeddings) == 0:
            return []
        probes = self.protector.protect(self.space.project(embeddings))
        if self.marks is not None and self.options.consistency == "Session":
            self._see(self.marks.get(self.collection))  # every replica's writes
        with self._call("search"):
            self._settle()
            with self._lock:
                removals = self._removals
            strong = removals > self._removals_seen
            found = self.client.search(
                self.collection,
                [p.tolist() for p in probes],
                filter=scope_filter(namespace, gallery),
                limit=top_k,
                # the key of the primary key differs (Lite and Milvus 2.5: "face_id";
                # 2.3: "id"); asked for as an output field it is in "entity" everywhere
                output_fields=["face_id", "subject_id"],
                search_params={"params": {"ef": max(ef, top_k)}},
                consistency_level="Strong" if strong else self.options.consistency,
                timeout=self.options.timeout,
            )
        if strong:
            with self._lock:
                self._removals_seen = max(self._removals_seen, removals)
        return [
            [
                Hit(h["entity"]["face_id"], h["entity"]["subject_id"], float(h["distance"]))
                for h in hits
            ]
            for hits in found
        ]

    def faces_of(self, subject_id: str) -> list[str]:
        expr = f'subject_id == "{check_id(subject_id, "subject id")}"'
        with self._call("list faces"):
            self._settle()
            rows = self.client.query(
                self.collection,
                filter=expr,
                output_fields=["face_id"],
                consistency_level="Strong",
                timeout=self.options.timeout,
            )
        return sorted(r["face_id"] for r in rows)

    def delete_faces(self, face_ids: Sequence[str]) -> None:
        if not face_ids:
            return
        ids = [check_id(f, "face id") for f in face_ids]
        try:
            with self._call("remove vectors"):
                self._settle()
                self.client.delete(self.collection, ids=ids, timeout=self.options.timeout)
        except IndexUnavailableError:
            self.forget(ids)
            raise
        self._removed()

    def delete_subject(self, subject_id: str) -> None:
        expr = f'subject_id == "{check_id(subject_id, "subject id")}"'
        with self._call("remove vectors"):
            self._settle()
            self.client.delete(self.collection, filter=expr, timeout=self.options.timeout)
        self._removed()

    def count(self) -> int:
        """Live vectors (deleted ones excluded, unlike the collection statistics)."""
        with self._call("count vectors"):
            self._settle()
            rows = self.client.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=self.options.timeout,
            )
        return int(rows[0]["count(*)"])

    def drop(self) -> None:
        with self._call("drop the collection"):
            self.client.drop_collection(self.collection, timeout=self.options.timeout)
        with self._lock:
            self._unsettled.clear()

    def recreate(self) -> None:
        """Drop the collection and create it empty again (before a full rebuild)."""
        self.drop()
        with self._call("create the collection"):
            self._ensure(self.index_type)
        self._lite_faces = self._unflushed = 0

    def close(self) -> None:
        self.client.close()

    def ids(self) -> set[str]:
        """Every face id in the collection (for reconciliation with the system of record)."""
        found: set[str] = set()
        with self._call("list vectors"):
            self._settle()
            it = self.client.query_iterator(
                self.collection,
                batch_size=5000,
                filter='face_id != ""',
                output_fields=["face_id"],
                consistency_level="Strong",
                timeout=self.options.timeout,
            )
            try:
                while batch := it.next():
                    found.update(r["face_id"] for r in batch)
            finally:
                it.close()
        return found
