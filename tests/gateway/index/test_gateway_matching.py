"""The gateway's 1:N on the core policy (gateway/service/matching.py), on a real index
(Milvus Lite) and a real record (SQLite): candidates ranked by centroid, not by the best
face; the operating point for the gallery's size; what a key without the admin role may
see and ask for; the cached gallery size."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facerec.matching import Candidate, IdentificationPolicy, Scoring
from facerec.models import load_model_card
from facerec.openset import FpirOutOfRangeError, OperatingPoint
from facerec.pipeline import PipelineConfig
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.gallery import Gallery
from gateway.index.manager import IndexManager
from gateway.service.matching import (
    GallerySize,
    IndexMatcher,
    ThresholdNotAllowedError,
    visible,
)
from gateway.service.types import Caller
from gateway.storage.database import Database

ADMIN = Caller("k1", "admin")
IDENTIFY = Caller("k2", "identify")


def policy(method: str = "centroid") -> IdentificationPolicy:
    cfg = PipelineConfig()
    return IdentificationPolicy.from_card(
        load_model_card(), cfg.alignment, cfg.flip, cfg.precision, Scoring(method)
    )


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture
def record(tmp_path: Path) -> Iterator[tuple[Database, Gallery]]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}", Keyring(MasterKey.generate()))
    index = IndexManager(db.secrets, str(tmp_path / "index.db"), 128, "FLAT")
    gallery = Gallery(db, index)
    try:
        yield db, gallery
    finally:
        gallery.close()
        db.engine.dispose()


def enrol(
    db: Database,
    gallery: Gallery,
    name: str,
    templates: np.ndarray,
    scope: tuple[str, str] = ("default", "default"),
) -> tuple[str, list[str]]:
    """(subject id, face ids) of a new subject of ``scope`` (namespace, gallery) with
    ``templates`` float32[K, 128]."""
    sid = db.subjects.create(name, namespace=scope[0], gallery=scope[1]).id
    faces = [
        gallery.add_face(sid, t, f"{name}-{k}", 0.9, [0, 0, 1, 1], scope=scope)
        for k, t in enumerate(templates)
    ]
    return sid, faces


def around(centre: np.ndarray, cosine: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """float32[n, 128] unit vectors at about ``cosine`` to the unit ``centre``."""
    noise = unit(rng.standard_normal((n, 128)))
    noise -= (noise @ centre)[:, None] * centre  # orthogonal to the centre
    return unit(cosine * centre + np.sqrt(1 - cosine**2) * unit(noise))


def test_candidates_are_ranked_by_centroid_not_by_the_best_face(
    record: tuple[Database, Gallery],
) -> None:
    """Subject A has one photo very like the probe and two unlike it; B has three photos
    all fairly like it. The best face says A; the centroid says B."""
    db, gallery = record
    rng = np.random.default_rng(0)
    probe = unit(rng.standard_normal(128))
    near = around(probe, 0.95, rng, 1)[0]
    other = around(probe, 0.0, rng, 2)  # A's other photos: nothing like the probe
    fair = around(probe, 0.75, rng, 3)
    a, (near_id, *_) = enrol(db, gallery, "A", np.stack([near, *other]))
    b, _ = enrol(db, gallery, "B", fair)
    for k in range(6):  # some people nothing like the probe
        enrol(db, gallery, f"x{k}", unit(rng.standard_normal((2, 128))))
    assert float(near @ probe) > float(np.max(fair @ probe))  # the best face is A's

    by_centroid = IndexMatcher(policy(), gallery.index, db.faces, 1e-3)
    (ranked,), names = by_centroid.match(probe[None], top_k=3)
    assert [c.subject_id for c in ranked[:2]] == [b, a]
    assert names[b] == "B" and names[a] == "A"
    centre_b = unit(fair.mean(axis=0))
    assert ranked[0].similarity == pytest.approx(float(centre_b @ probe), abs=1e-5)

    by_max = IndexMatcher(policy("max"), gallery.index, db.faces, 1e-3)
    (ranked,), _ = by_max.match(probe[None], top_k=3)
    assert ranked[0].subject_id == a and ranked[0].similarity == pytest.approx(
        float(near @ probe), abs=1e-4
    )

    # a deleted face no longer counts in its subject's score
    gallery.delete_face(a, near_id)
    (ranked,), _ = by_centroid.match(probe[None], top_k=8)
    again = unit(other.mean(axis=0))
    score_a = next(c.similarity for c in ranked if c.subject_id == a)
    assert score_a == pytest.approx(float(again @ probe), abs=1e-5)


def test_operating_point_follows_the_gallery_size(record: tuple[Database, Gallery]) -> None:
    db, gallery = record
    rng = np.random.default_rng(1)
    matcher = IndexMatcher(policy(), gallery.index, db.faces, 1e-3)
    for k in range(3):
        enrol(db, gallery, f"p{k}", unit(rng.standard_normal((2, 128))))
    db.subjects.create("nobody")  # no face: not in the gallery
    matcher.sizes.changed()
    point = matcher.operating_point()
    expected = policy().operating_point(3, 1e-3)
    assert point == expected and point.gallery_size == 3
    assert point.source == "calibrated" and point.method == "centroid"
    looser = matcher.operating_point(fpir=1e-2)
    assert looser.threshold < point.threshold and looser.fpir == 1e-2
    explicit = matcher.operating_point(threshold=0.5)
    assert (explicit.threshold, explicit.fpir, explicit.source) == (0.5, None, "explicit")
    with pytest.raises(FpirOutOfRangeError):
        matcher.operating_point(fpir=0.5)
    with pytest.raises(FpirOutOfRangeError):  # the service's own FPIR is checked at start
        IndexMatcher(policy(), gallery.index, db.faces, 0.5)


def test_a_caller_searches_and_is_sized_by_its_namespace_and_gallery(
    record: tuple[Database, Gallery],
) -> None:
    """The same person enrolled in two namespaces and two galleries: each caller's
    candidates come from its own scope only, and its operating point is the one for the
    size of that scope's gallery."""
    db, gallery = record
    rng = np.random.default_rng(3)
    probe = unit(rng.standard_normal(128))
    mine = {
        scope: enrol(db, gallery, f"{scope}", around(probe, 0.8, rng, 2), scope)[0]
        for scope in (("acme", "default"), ("acme", "lobby"), ("globex", "default"))
    }
    for k in range(4):  # more people at globex only
        enrol(db, gallery, f"g{k}", unit(rng.standard_normal((2, 128))), ("globex", "default"))
    matcher = IndexMatcher(policy(), gallery.index, db.faces, 1e-3)

    def found(scope: tuple[str | None, str | None]) -> set[str]:
        (ranked,), names = matcher.match(probe[None], top_k=20, scope=scope)
        assert set(names) >= {c.subject_id for c in ranked}
        return {c.subject_id for c in ranked}

    assert found(("acme", None)) == {mine["acme", "default"], mine["acme", "lobby"]}
    assert found(("acme", "lobby")) == {mine["acme", "lobby"]}
    assert mine["globex", "default"] in found(("globex", None))
    assert not found(("globex", None)) & set(found(("acme", None)))
    assert len(found((None, None))) == 7

    def size(namespace: str, gallery_name: str | None = None) -> int:
        caller = Caller("k", "identify", None, namespace, gallery_name)
        point = matcher.operating_point(caller=caller)
        assert point == policy().operating_point(point.gallery_size, 1e-3)
        return point.gallery_size

    assert (size("acme"), size("acme", "lobby"), size("globex"), size("nobody")) == (2, 1, 5, 0)
    assert matcher.operating_point().gallery_size == 7  # the service itself: everywhere
    # a change is applied at once to the sizes that hold it, and to those only
    enrol(db, gallery, "new", unit(rng.standard_normal((1, 128))), ("acme", "lobby"))
    matcher.sizes.changed(+1, ("acme", "lobby"))
    assert (size("acme"), size("acme", "lobby"), size("globex"), size("nobody")) == (3, 2, 5, 0)
    assert matcher.operating_point().gallery_size == 8


def test_a_key_without_the_admin_role_cannot_loosen_the_threshold(
    record: tuple[Database, Gallery],
) -> None:
    db, gallery = record
    matcher = IndexMatcher(policy(), gallery.index, db.faces, 1e-3)
    floor = matcher.operating_point(caller=IDENTIFY)
    assert matcher.operating_point(fpir=1e-3, caller=IDENTIFY) == floor
    assert matcher.operating_point(threshold=0.95, caller=IDENTIFY).threshold == 0.95
    for loose in ({"threshold": -1.0}, {"threshold": floor.threshold - 0.01}, {"fpir": 1e-2}):
        with pytest.raises(ThresholdNotAllowedError) as err:
            matcher.operating_point(**loose, caller=IDENTIFY)  # type: ignore[arg-type]
        assert err.value.code == "threshold_not_allowed" and err.value.http_status == 403
        matcher.operating_point(**loose, caller=ADMIN)  # type: ignore[arg-type]


def test_only_candidates_at_or_above_the_threshold_are_visible() -> None:
    point = OperatingPoint(0.6, 1e-3, 10, "centroid", "calibrated")
    found = [Candidate("a", 0.8), Candidate("b", 0.6), Candidate("c", 0.59), Candidate("d", 0.1)]
    assert visible(found, point, ADMIN) == found
    assert visible(found, point, None) == found  # the service itself
    assert [c.subject_id for c in visible(found, point, IDENTIFY)] == ["a", "b"]
    assert visible(found[2:], point, Caller("k3", "verify")) == []


def test_gallery_size_is_counted_once_then_adjusted_and_recounted() -> None:
    truth = {"n": 5}
    calls = []
    release = threading.Event()
    release.set()

    def count() -> int:
        calls.append(1)
        release.wait(10)
        return truth["n"]

    size = GallerySize(count, max_age=3600)
    assert size.get() == 5 and len(calls) == 1
    assert size.get() == 5 and len(calls) == 1  # cached
    release.clear()  # the next recount blocks until released
    truth["n"] = 6
    size.changed(+1)  # a first face enrolled here: known at once ...
    assert size.get() == 6  # ... and a recount started in the background
    size.changed(-1)  # a subject deleted meanwhile: the running recount will not settle
    assert size.get() == 5
    truth["n"] = 5
    release.set()
    deadline = time.monotonic() + 10
    while size._dirty and time.monotonic() < deadline:  # another recount follows, then settles
        size.get()
        time.sleep(0.01)
    assert not size._dirty and size.get() == 5 and len(calls) >= 3
