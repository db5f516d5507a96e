"""A synthetic gallery for the search benchmarks (``perf.identify_scoring``,
``perf.search_scaling``, ``perf.milvus_consistency``): face embeddings with the cluster
structure of real templates, probes of the enrolled people, and the system of record the
gateway would hold for them."""

from __future__ import annotations

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session
from tqdm import tqdm

from gateway.crypto.envelope import new_data_key, seal_template
from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE
from gateway.storage.database import Database
from gateway.storage.schema import FaceRow, SubjectRow, now

DIM = 128
PHOTOS = 4  # per identity
NOISE = 0.6  # per-dimension noise relative to the centre: same-identity cosine about 0.7


def synthetic(rng: np.random.Generator, identities: int, photos: int) -> np.ndarray:
    """float32[identities * photos, DIM] unit rows: random unit centres, ``photos`` noisy
    copies of each, identity after identity."""
    centres = rng.standard_normal((identities, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, photos, axis=0)
    x += NOISE / np.sqrt(DIM) * rng.standard_normal(x.shape).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def seen_again(rng: np.random.Generator, gallery: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """float64[len(picked), DIM] unit rows: the first photo of each ``picked`` identity of
    ``gallery`` (``PHOTOS`` a person) with fresh noise: a new photo of that person."""
    probes = gallery[picked * PHOTOS]
    probes = probes + NOISE / np.sqrt(DIM) * rng.standard_normal(probes.shape).astype(np.float32)
    out: np.ndarray = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    return out


def build_record(
    db: Database, gallery: np.ndarray, batch: int, progress: bool = False
) -> tuple[list[str], list[str]]:
    """The system of record the gateway would hold for ``gallery`` (``PHOTOS`` rows a
    person): one subject per identity (``s00000000``...) in the default namespace and
    gallery, one sealed template per photo (``f00000000``..., state ``indexed``), written
    ``batch`` subjects per statement. Returns each face's id and its subject's id."""
    identities = len(gallery) // PHOTOS
    subject_ids = [f"s{i:08d}" for i in range(identities)]
    face_ids = [f"f{i:08d}" for i in range(identities * PHOTOS)]
    created = now()
    with Session(db.engine) as s, s.begin():
        steps = range(0, identities, batch)
        for lo in tqdm(steps, desc="record", unit_scale=batch, disable=not progress):
            subjects, faces = [], []
            for i in range(lo, min(identities, lo + batch)):
                sid, key = subject_ids[i], new_data_key()
                wrapped = db.keyring.wrap(key, sid)
                subjects.append(
                    {
                        "id": sid,
                        "name": f"person {i}",
                        "namespace": DEFAULT_NAMESPACE,
                        "gallery": DEFAULT_GALLERY,
                        "meta": {},
                        "created_at": created,
                        "dek_key_id": wrapped.key_id,
                        "dek_blob": wrapped.blob,
                    }
                )
                for f in range(i * PHOTOS, (i + 1) * PHOTOS):
                    faces.append(
                        {
                            "id": face_ids[f],
                            "subject_id": sid,
                            "template": seal_template(key, gallery[f], sid, face_ids[f]),
                            "content_hash": face_ids[f],
                            "quality": 0.99,
                            "box": [0.0, 0.0, 160.0, 160.0],
                            "state": "indexed",
                            "created_at": created,
                        }
                    )
            s.execute(insert(SubjectRow), subjects)
            s.execute(insert(FaceRow), faces)
    return face_ids, [subject_ids[f // PHOTOS] for f in range(len(face_ids))]
