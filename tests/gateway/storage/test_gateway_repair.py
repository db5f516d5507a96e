"""Start-up repair, state by state: each place an enrolment or a deletion can die; and the
index's move to a new protection key (other models' collections dropped with the old
key). On Milvus Lite, Milvus Lite's server and a real Milvus standalone server."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devkit.servers import MilvusTarget
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.gallery import Gallery
from gateway.index.manager import IndexManager
from gateway.storage.database import Database


def unit(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return x / np.linalg.norm(x)


def test_reconcile_repairs_every_crash_point(tmp_path: Path, milvus: MilvusTarget) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}", Keyring(MasterKey.generate()))
    store = db.faces
    index = IndexManager(db.secrets, milvus.uri, 128, "FLAT", milvus.options())
    gallery = Gallery(db, index)
    sid = db.subjects.create("A").id

    def face(seed: int) -> str:
        return store.add_face(sid, unit(seed), f"h{seed}", 0.9, [0, 0, 1, 1])

    done = face(1)  # a complete enrolment
    index.add([done], [sid], unit(1)[None])
    store.mark_indexed([done])
    face(2)  # killed after the SQL write (its vector never written)
    died_before_mark = face(3)  # killed after the vector write
    index.add([died_before_mark], [sid], unit(3)[None])
    lost_vector = face(4)  # indexed, but its vector is gone (say, a lost index file)
    store.mark_indexed([lost_vector])
    index.add(["orphan"], [sid], unit(5)[None])  # a deletion that died after the SQL delete

    repaired = gallery.reconcile()
    assert (repaired.rolled_back, repaired.restored, repaired.orphans) == (2, 1, 1)
    assert store.face_ids() == {done, lost_vector} == store.indexed_face_ids()
    assert index.current.ids() == {done, lost_vector}
    hit = index.search(unit(4)[None], 1)[0][0]
    assert (hit.face_id, round(hit.similarity, 4)) == (lost_vector, 1.0)
    assert gallery.reconcile() == type(repaired)(0, 0, 0)  # nothing left to do
    index.close()


def test_rotation_moves_the_index_to_a_new_key(tmp_path: Path, milvus: MilvusTarget) -> None:
    old_master = MasterKey.generate()
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = Database(url, Keyring(old_master))
    index = IndexManager(db.secrets, milvus.uri, 128, "FLAT", milvus.options(), refresh=0.05)
    sid = db.subjects.create("A").id
    ids = []
    for seed in range(5):
        f = db.faces.add_face(sid, unit(seed), f"h{seed}", 0.9, [0, 0, 1, 1])
        index.add([f], [sid], unit(seed)[None])
        db.faces.mark_indexed([f])
        ids.append(f)
    old_collection = index.current.collection
    index.close()
    # a collection of another model under the same key (that model ran here before)
    other = IndexManager(
        db.secrets, milvus.uri, 128, "FLAT", milvus.options(), model_id="rotated:0123456789ab"
    )
    other.add(["other-face"], [sid], unit(9)[None])
    other_collection = other.current.collection
    assert other_collection != old_collection
    other.close()

    # `facerec keys rotate`: the new master key, with the old one to unwrap
    new_master = MasterKey.generate()
    db = Database(url, Keyring(new_master, [old_master]))
    assert db.rotate_master_key() == 1 + 1  # the subject's data key + the index secret
    index = IndexManager(db.secrets, milvus.uri, 128, "FLAT", milvus.options(), refresh=0.05)
    moved = Gallery(db, index).rotate_index(MasterKey.generate().secret)
    assert moved == 5
    assert index.current.collection != old_collection
    assert not index.current.client.has_collection(old_collection)
    # the other model's collection was keyed by the retired key: dropped, rebuilt from the
    # system of record if that model runs again
    assert not index.current.client.has_collection(other_collection)
    hit = index.search(unit(3)[None], 1)[0][0]
    assert hit.face_id == ids[3] and hit.similarity > 0.9999
    index.close()
    # the old master key is no longer needed
    assert len(list(Database(url, Keyring(new_master)).faces.templates())) == 5
