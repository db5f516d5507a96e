"""What reaches the disk: after enrolment, no file in the data directory holds a raw
embedding, while the protected vectors the index needs are there.

Milvus Lite keeps rows in Snappy-compressed Parquet and re-normalises vectors for cosine
search (changing their last bits), so the index files are decoded and compared by value;
every other file (SQLite and its journal) is searched byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facerec.pipeline import FacePipeline
from tests.support.apiclient import image_files, running, settings_for
from tests.support.data import GALLERY


def stored_vectors(root: Path) -> np.ndarray:
    """float32[N, 128]: every vector column of every Parquet file under ``root``."""
    found = []
    for path in sorted(root.rglob("*.parquet")):
        for column in pq.read_table(path).columns:
            values = column.combine_chunks()
            if pa.types.is_fixed_size_list(values.type):
                found.append(np.asarray(values.flatten(), np.float32).reshape(len(values), -1))
    return np.concatenate(found) if found else np.zeros((0, 128), np.float32)


def chunks(vector: np.ndarray, dtype: str, floats: int = 4) -> list[bytes]:
    raw = np.asarray(vector, dtype=dtype).tobytes()
    step = np.dtype(dtype).itemsize * floats
    return [raw[i : i + step] for i in range(0, len(raw) - step + 1, step)]


def test_no_raw_embedding_on_disk(tmp_path: Path, pipeline: FacePipeline) -> None:
    data = tmp_path / "data"
    with running(settings_for(data, {}), pipeline) as client:
        sid = client.post("/v1/subjects", json={"name": "Xanana"}).json()["id"]
        # all but the profile photo, which the pose gate refuses (test_gateway_enrolment.py)
        paths = [p for p in sorted(GALLERY.glob("Xanana_Gusmao_*.jpg")) if "_0002" not in p.name]
        r = client.post(f"/v1/subjects/{sid}/faces", files=image_files(paths))
        assert r.json()["enrolled"] == len(paths)
        gateway = client.app.state.gateway  # type: ignore[attr-defined]
        templates = np.stack([v for _, _, v in gateway.db.faces.templates(sid)])
        index = gateway.gallery.index
        protected = index.current.protector.protect(templates)
        index.current.client.flush(index.current.collection)
    assert templates.shape == (len(paths), 128)

    files = [p for p in sorted(data.rglob("*")) if p.is_file()]
    assert any(p.name.startswith("facerec.sqlite3") for p in files)
    blob = b"\n".join(p.read_bytes() for p in files)
    for vector in templates:
        for dtype in ("<f4", "<f8"):
            leaks = [c for c in chunks(vector, dtype) if c in blob]
            assert not leaks, f"{len(leaks)} pieces of a raw {dtype} embedding found on disk"

    stored = stored_vectors(data)
    assert len(stored) == len(paths)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    # no stored vector is (close to) a raw embedding ...
    assert np.abs(stored @ templates.T).max() < 0.6
    # ... while each protected vector is there (the control: the scan does see vectors)
    assert (stored @ protected.T).max(axis=0).min() > 0.9999
