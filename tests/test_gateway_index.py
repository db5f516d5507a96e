"""The protected face index against real Milvus: Milvus Lite embedded, and a Milvus Lite
server process on loopback (started here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from gateway.crypto.envelope import MasterKey
from gateway.crypto.vector_protection import VectorProtector
from gateway.index.milvus import FaceIndex

pytest.importorskip("milvus_lite")


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.integration)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lite":
        return str(tmp_path / "index.db")
    return str(request.getfixturevalue("milvus_server_uri"))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_finds_the_enrolled_face(uri: str) -> None:
    rng = np.random.default_rng(0)
    key = MasterKey.generate()
    index = FaceIndex(uri, VectorProtector(key, 128), index_type="FLAT")
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
