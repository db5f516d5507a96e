"""The protected face index against real Milvus: Milvus Lite embedded, Milvus Lite's server
process, and a Milvus 2.3 standalone server (authentication and TLS on), both on loopback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devkit.servers import MilvusTarget
from facerec.errors import InvalidArgumentError
from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.index.milvus import FaceIndex

pytest.importorskip("milvus_lite")


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", ["FLAT", "HNSW"])
def test_search_finds_the_enrolled_face(milvus: MilvusTarget, index_type: str) -> None:
    rng = np.random.default_rng(0)
    key = MasterKey.generate()
    index = FaceIndex(
        milvus.uri, VectorProtector(key, 128), index_type=index_type, options=milvus.options()
    )
    try:
        gallery = unit(rng, 300)
        faces = [f"f{i}" for i in range(300)]
        subjects = [f"s{i // 3}" for i in range(300)]
        index.add(faces, subjects, gallery)
        assert index.count() == 300
        noisy = gallery[[5, 150]] + 0.05 * unit(rng, 2)
        hits = index.search(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), top_k=3)
        assert [h[0].face_id for h in hits] == ["f5", "f150"]
        assert [h[0].subject_id for h in hits] == ["s1", "s50"]
        expected = float(gallery[5] @ (noisy[0] / np.linalg.norm(noisy[0])))
        assert hits[0][0].similarity == pytest.approx(expected, abs=1e-4)
        assert index.faces_of("s1") == ["f3", "f4", "f5"]
        index.delete_subject("s1")
        index.delete_faces(["f150"])
        assert index.count() == 296 and index.faces_of("s1") == []
        after = index.search(gallery[[5, 150]], top_k=1)
        assert after[0][0].face_id != "f5" and after[1][0].face_id != "f150"
    finally:
        index.drop()
        index.close()


def test_index_holds_only_protected_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gallery = unit(rng, 20)
    index = FaceIndex(str(tmp_path / "index.db"), VectorProtector(MasterKey.generate(), 128))
    index.add([f"f{i}" for i in range(20)], ["s"] * 20, gallery)
    index.count()
    stored = np.array(
        [
            r["vector"]
            for r in index.client.query(
                index.collection, filter="", limit=20, output_fields=["vector"]
            )
        ],
        np.float32,
    )
    index.close()
    # No stored vector is close to any raw embedding ...
    assert np.abs(stored @ gallery.T).max() < 0.5
    # ... and no file of the index holds the raw float32 bytes of one.
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert not any(g.tobytes()[:32] in blob for g in gallery)


def test_ids_cannot_inject_filters(tmp_path: Path) -> None:
    index = FaceIndex(str(tmp_path / "index.db"), VectorProtector(MasterKey.generate(), 128))
    with pytest.raises(InvalidArgumentError):
        index.delete_subject('x" or subject_id != "')
    with pytest.raises(InvalidArgumentError):
        index.add(["f 1"], ["s"], np.zeros((1, 128), np.float32))
    index.close()


def test_searches_stay_in_their_namespace_and_gallery(milvus: MilvusTarget) -> None:
    """The scope fields and filters on each Milvus (Lite, Lite's server, the 2.3 server,
    where hits name the primary key differently)."""
    rng = np.random.default_rng(3)
    index = FaceIndex(
        milvus.uri, VectorProtector(MasterKey.generate(), 128), options=milvus.options()
    )
    try:
        faces = unit(rng, 3)
        scopes = [("acme", "staff"), ("acme", "visitors"), ("other", "staff")]
        index.add(["f0", "f1", "f2"], ["s0", "s1", "s2"], faces, scopes)
        probe = np.repeat(faces[:1], 1, axis=0)
        found = {
            scope: [
                h.face_id for h in index.search(probe, 3, namespace=scope[0], gallery=scope[1])[0]
            ]
            for scope in [("acme", None), ("acme", "visitors"), ("other", None), ("none", None)]
        }
        assert found == {
            ("acme", None): ["f0", "f1"],
            ("acme", "visitors"): ["f1"],
            ("other", None): ["f2"],
            ("none", None): [],
        }
        assert sorted(h.face_id for h in index.search(probe, 3)[0]) == ["f0", "f1", "f2"]
        with pytest.raises(InvalidArgumentError):
            index.search(probe, 3, namespace='acme" or namespace != "')
    finally:
        index.drop()
        index.close()
