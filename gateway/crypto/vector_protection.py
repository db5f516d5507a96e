"""Protected vectors for the search index.

The vector index (Milvus) never holds a raw embedding: it holds ``Q @ e`` where ``Q`` is a
secret orthogonal matrix derived from the master key. Rotations preserve dot products, so
cosine search over protected vectors ranks exactly as over the originals, while the stored
vectors cannot be compared with embeddings from elsewhere, or between deployments, without
the key. A new master key gives a new ``Q``; re-indexing from the encrypted system of
record moves the index over.
"""

from __future__ import annotations

import hashlib

import numpy as np

from gateway.crypto.envelope import MasterKey


class VectorProtector:
    """``protect`` with the orthogonal matrix of one master key."""

    def __init__(self, master: MasterKey, dim: int) -> None:
        seed = master.derive("index-protection")
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
        q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
        q *= np.sign(np.diag(r))  # a unique Q for the seed (Haar-distributed)
        self.matrix = q.astype(np.float32)
        self.dim = dim
        digest = hashlib.sha256(b"facerec/protector-id/v1/" + seed).hexdigest()[:16]
        self.key_id = f"vp-{digest}"

    def protect(self, vectors: np.ndarray) -> np.ndarray:
        """float32[N, D] embeddings -> float32[N, D] protected vectors (same norms)."""
        return np.asarray(vectors, np.float32) @ self.matrix.T
