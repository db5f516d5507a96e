"""Subject scoring, thresholds by FPIR and the open-set decision, on hand-made vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from facerec.matching import (
    DEFAULT_SCORING,
    SCORE_METHODS,
    Candidate,
    Gallery,
    Hit,
    IdentificationPolicy,
    Scoring,
    candidates_from_hits,
    centroid,
    centroids,
    decide,
    rank_candidates,
    rerank,
)
from facerec.models import load_model_card
from facerec.openset import (
    FPIR_ENV,
    FpirOutOfRangeError,
    OperatingPoint,
    ThresholdTable,
    fpir_from_env,
    operating_point,
)


def unit(angle_deg: float) -> np.ndarray:
    """A unit vector in the plane at ``angle_deg`` from the x axis (float32[2])."""
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)], np.float32)


def cos(deg: float) -> float:
    return math.cos(math.radians(deg))


@pytest.fixture
def two_subjects() -> dict[str, np.ndarray]:
    # "a": templates at 10, 30 and 50 degrees (centroid at 30); "b": one template at 40
    return {
        "a": np.stack([unit(10), unit(30), unit(50)]),
        "b": unit(40)[None],
    }


@pytest.mark.parametrize(
    ("method", "expected_a"),
    [
        ("max", cos(10)),  # probe at 0 degrees: the best template is the one at 10
        ("topk", (cos(10) + cos(30)) / 2),  # the two best: 10 and 30 degrees
        ("centroid", cos(30)),  # the mean of 10, 30, 50 degrees points at 30
    ],
)
def test_subject_scores_are_exact(
    two_subjects: dict[str, np.ndarray], method: str, expected_a: float
) -> None:
    gallery = Gallery(2, Scoring.parse(method, k=2))
    for name, templates in two_subjects.items():
        gallery.add(name, templates)
    scores = gallery.scores(unit(0)[None])
    assert scores.shape == (1, 2) and scores.dtype == np.float32
    assert scores[0, 0] == pytest.approx(expected_a, abs=1e-6)
    assert scores[0, 1] == pytest.approx(cos(40), abs=1e-6)  # one template: all methods agree


def test_methods_can_rank_differently() -> None:
    """ "a" has templates at 0 and 90 degrees (centroid at 45), "b" one at 60. A probe at 85
    is 5 degrees from a's second template (max ranks "a" first) but 40 from a's centroid
    and 25 from "b" (centroid ranks "b" first)."""
    subjects = {"a": np.stack([unit(0), unit(90)]), "b": unit(60)[None]}
    ranked = {}
    for method in SCORE_METHODS:
        gallery = Gallery(2, Scoring.parse(method))
        for name, t in subjects.items():
            gallery.add(name, t)
        ranked[method] = [c.subject_id for c in gallery.search(unit(85)[None], top=2)[0]]
    assert ranked["max"] == ["a", "b"]
    assert ranked["centroid"] == ["b", "a"]


def test_topk_with_fewer_templates_than_k_averages_what_it_has() -> None:
    gallery = Gallery(2, Scoring("topk", k=3))
    gallery.add("x", np.stack([unit(0), unit(60)]))
    assert gallery.scores(unit(0)[None])[0, 0] == pytest.approx((1 + cos(60)) / 2, abs=1e-6)


def test_add_more_templates_later_and_search_top(two_subjects: dict[str, np.ndarray]) -> None:
    gallery = Gallery(2, Scoring("max"))
    gallery.add("a", two_subjects["a"][:1])
    gallery.add("b", two_subjects["b"])
    gallery.add("a", two_subjects["a"][1:])
    assert len(gallery) == 2 and gallery.templates("a").shape == (3, 2)
    (only,) = gallery.search(unit(49)[None], top=1)
    assert [c.subject_id for c in only] == ["a"]
    assert only[0].similarity == pytest.approx(cos(1), abs=1e-6)
    assert gallery.search(np.zeros((0, 2), np.float32)) == []


def test_gallery_refuses_wrong_shapes() -> None:
    with pytest.raises(InvalidArgumentError):
        Gallery(2).add("x", np.ones((3,), np.float32))
    with pytest.raises(InvalidArgumentError):
        Gallery(2).add("x", np.ones((1, 3), np.float32))


def test_centroid_is_the_normalised_mean() -> None:
    c = centroid(np.stack([unit(0), unit(90)]))
    np.testing.assert_allclose(c, unit(45), atol=1e-6)
    with pytest.raises(InvalidArgumentError):
        centroid(np.stack([unit(0), unit(180)]))  # opposite vectors: no direction


def test_centroids_of_padded_subjects_are_each_subjects_centroid() -> None:
    """The gallery's centroids in one pass over zero-padded templates, exactly as one
    subject's at a time (the padding adds nothing)."""
    rng = np.random.default_rng(3)
    subjects = [rng.standard_normal((k, 8)).astype(np.float32) for k in (1, 3, 2)]
    subjects = [s / np.linalg.norm(s, axis=1, keepdims=True) for s in subjects]
    padded = np.zeros((3, 3, 8), np.float32)
    for i, s in enumerate(subjects):
        padded[i, : len(s)] = s
    counts = np.array([len(s) for s in subjects])
    for i, c in enumerate(centroids(padded, counts)):
        np.testing.assert_array_equal(c, centroid(subjects[i]))
    gallery = Gallery(8)
    for i, s in enumerate(subjects):
        gallery.add(f"s{i}", s[:1])
        gallery.add(f"s{i}", s[1:])  # added in two parts: one subject still
    np.testing.assert_array_equal(gallery.templates("s1"), subjects[1])
    np.testing.assert_allclose(
        gallery.scores(subjects[2][:1])[0, 2], centroid(subjects[2]) @ subjects[2][0], rtol=1e-6
    )
    with pytest.raises(InvalidArgumentError):
        centroids(padded, np.array([1, 0, 2]))  # a subject without templates


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="max, topk, centroid"):
        Scoring.parse("median")
    with pytest.raises(InvalidArgumentError):
        Scoring("topk", k=0)


def test_candidates_from_face_hits() -> None:
    hits = [
        Hit("f1", "a", 0.9),
        Hit("f2", "b", 0.85),
        Hit("f3", "b", 0.8),
        Hit("f4", "a", 0.3),
        Hit("f5", "c", 0.1),
    ]
    best = candidates_from_hits(hits, Scoring("max"))
    assert [(c.subject_id, c.similarity) for c in best] == [("a", 0.9), ("b", 0.85), ("c", 0.1)]
    mean2 = candidates_from_hits(hits, Scoring("topk", k=2), top=2)
    assert [c.subject_id for c in mean2] == ["b", "a"]
    assert mean2[0].similarity == pytest.approx(0.825) and mean2[1].similarity == pytest.approx(0.6)
    with pytest.raises(InvalidArgumentError, match="centroid"):
        candidates_from_hits(hits, Scoring("centroid"))


def test_rerank_matches_a_gallery(two_subjects: dict[str, np.ndarray]) -> None:
    probes = np.stack([unit(0), unit(85)])
    for method in SCORE_METHODS:
        scoring = Scoring.parse(method)
        gallery = Gallery(2, scoring)
        for name, t in two_subjects.items():
            gallery.add(name, t)
        assert rerank(probes, two_subjects, scoring) == gallery.search(probes)


def test_rank_candidates_from_index_hits(two_subjects: dict[str, np.ndarray]) -> None:
    """What a service does with a face index: hits, then (for centroid) the hit subjects'
    templates; a subject the index returned but the store no longer has is dropped."""
    probe = unit(0)
    hits = [Hit("a1", "a", cos(10)), Hit("b1", "b", cos(40)), Hit("x1", "gone", 0.99)]
    with_templates = rank_candidates(probe, hits, Scoring("centroid"), two_subjects)
    assert [c.subject_id for c in with_templates] == ["a", "b"]
    assert with_templates[0].similarity == pytest.approx(cos(30), abs=1e-6)
    from_hits = rank_candidates(probe, hits, Scoring("max"), top=2)
    assert [c.subject_id for c in from_hits] == ["gone", "a"]
    assert rank_candidates(probe, [], Scoring("centroid"), two_subjects) == []


def point(threshold: float) -> OperatingPoint:
    return OperatingPoint(threshold, 1e-3, 10, "centroid", "calibrated")


def test_decide_takes_the_best_candidate_at_or_above_the_threshold() -> None:
    cands = [Candidate("b", 0.5), Candidate("a", 0.7)]
    decision = decide(cands, point(0.7))
    assert decision.match == Candidate("a", 0.7)  # the best, whatever the order given
    assert [c.subject_id for c in decision.candidates] == ["a", "b"]
    assert decide(cands, point(0.7001)).match is None
    assert decide([], point(-1.0)).match is None
    doc = decision.to_dict()
    assert doc["match"] == {"subject": "a", "similarity": 0.7}
    assert {k: doc[k] for k in ("threshold", "fpir", "gallery_size", "method")} == {
        "threshold": 0.7,
        "fpir": 1e-3,
        "gallery_size": 10,
        "method": "centroid",
    }


TABLE = ThresholdTable(
    "centroid",
    gallery_sizes=(1, 10, 100),
    fpirs=(1e-1, 1e-2, 1e-3),
    thresholds=((0.30, 0.40, 0.50), (0.40, 0.50, 0.60), (0.50, 0.60, 0.70)),
)


def test_table_is_exact_on_the_grid_and_log_linear_between() -> None:
    assert TABLE.threshold(1e-2, 10) == (pytest.approx(0.50), False)
    assert TABLE.threshold(1e-3, 100) == (pytest.approx(0.70), False)
    # halfway in log(G) between 10 and 100 (G = 31.6) and in log(FPIR) between 1e-2 and 1e-3
    t, _ = TABLE.threshold(10**-2.5, round(10**1.5))
    assert t == pytest.approx(0.60, abs=2e-3)
    assert TABLE.threshold(1e-1, 0)[0] == pytest.approx(0.30)  # empty gallery: as for one


def test_table_extrapolates_past_the_largest_gallery_and_says_so() -> None:
    t, extrapolated = TABLE.threshold(1e-2, 1000)
    assert extrapolated and t == pytest.approx(0.70)  # the last segment continued
    p = operating_point(TABLE, 1000, fpir=1e-2)
    assert p.source == "extrapolated" and p.threshold == pytest.approx(0.70)


def test_fpir_outside_the_measured_range_is_refused() -> None:
    with pytest.raises(FpirOutOfRangeError) as err:
        TABLE.threshold(1e-4, 10)
    assert err.value.code == "fpir_out_of_range" and err.value.http_status == 400
    for bad in (0.0, 1.0, -1e-3, float("nan")):
        with pytest.raises(InvalidArgumentError):
            operating_point(TABLE, 10, fpir=bad)


def test_explicit_threshold_overrides() -> None:
    p = operating_point(TABLE, 10, fpir=1e-1, threshold=0.9)
    assert (p.threshold, p.fpir, p.source) == (0.9, None, "explicit")
    with pytest.raises(InvalidArgumentError):
        operating_point(TABLE, 10, threshold=1.5)


def test_fpir_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FPIR_ENV, raising=False)
    assert fpir_from_env() == 1e-3
    assert operating_point(TABLE, 10).fpir == 1e-3
    monkeypatch.setenv(FPIR_ENV, "0.01")
    assert operating_point(TABLE, 10).threshold == pytest.approx(0.50)
    monkeypatch.setenv(FPIR_ENV, "lots")
    with pytest.raises(InvalidArgumentError, match=FPIR_ENV):
        fpir_from_env()


def test_table_refuses_malformed_grids() -> None:
    with pytest.raises(InvalidArgumentError):
        ThresholdTable("max", (10, 1), (0.1,), ((0.5,), (0.4,)))
    with pytest.raises(InvalidArgumentError):
        ThresholdTable("max", (1,), (1e-3, 1e-2), ((0.5, 0.4),))
    with pytest.raises(InvalidArgumentError):
        ThresholdTable("max", (1, 2), (0.1,), ((0.5,),))
    round_trip = ThresholdTable.from_dict("centroid", TABLE.to_dict())
    assert round_trip == TABLE


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_card_thresholds_rise_with_gallery_size_and_fall_with_fpir(method: str) -> None:
    """The measured tables in the model card behave like an impostor distribution's tail."""
    card = load_model_card()
    policy = IdentificationPolicy.from_card(card, "similarity", True, "int8", Scoring.parse(method))
    table = policy.table
    assert table.fpir_range[0] <= 1e-3 and table.fpir_range[1] >= 1e-1
    rows = np.array(table.thresholds)
    assert (np.diff(rows, axis=0) >= 0).all()  # larger gallery, higher threshold
    assert (np.diff(rows, axis=1) >= 0).all()  # lower FPIR, higher threshold
    small = policy.operating_point(10, fpir=1e-3).threshold
    large = policy.operating_point(1000, fpir=1e-3).threshold
    assert large > small > card.calibration("similarity", True, "int8").threshold


def test_policy_identifies_against_an_in_memory_gallery(
    two_subjects: dict[str, np.ndarray],
) -> None:
    card = load_model_card()
    policy = IdentificationPolicy.from_card(card, "similarity", True, "int8")
    assert policy.scoring == DEFAULT_SCORING
    gallery = Gallery(2, policy.scoring)
    for name, t in two_subjects.items():
        gallery.add(name, t)
    near_b, far = policy.identify(gallery, np.stack([unit(40), unit(-90)]), fpir=1e-2)
    assert near_b.match is not None and near_b.match.subject_id == "b"
    assert near_b.point.gallery_size == 2 and near_b.point.fpir == 1e-2
    assert far.match is None
    with pytest.raises(InvalidArgumentError):
        IdentificationPolicy(Scoring("max"), TABLE)  # a centroid table cannot serve max
