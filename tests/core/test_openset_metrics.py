"""The open-set metrics (expected over random galleries) against explicit random galleries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerec.evaluation.lfw_faces import LfwFaces
from facerec.evaluation.openset import Mated, NonMated, calibrate, none_drawn, subject_scores
from facerec.evaluation.openset_lfw import Identities, enrol, split_halves
from facerec.matching import Gallery, Scoring


def test_none_drawn_is_the_hypergeometric_probability() -> None:
    for total, marked, draws in [(10, 3, 4), (10, 0, 10), (10, 7, 4), (5, 5, 1), (6, 2, 0)]:
        expected = (
            math.comb(total - marked, draws) / math.comb(total, draws)
            if total - marked >= draws
            else 0.0
        )
        assert none_drawn(np.array([total]), np.array([marked]), draws)[0] == pytest.approx(
            expected
        )
    # draws clipped to the population: drawing 20 of 10 is drawing all of them
    assert none_drawn(np.array([10]), np.array([1]), 20)[0] == 0.0


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-mated scores of 300 probes against 60 subjects (each probe's own subject among
    them), and mated scores of 200 probes."""
    rng = np.random.default_rng(1)
    s = 60
    nonmated = rng.normal(0.2, 0.12, (300, s)).astype(np.float32)
    own = rng.integers(0, s, 300)
    mated = rng.normal(0.2, 0.12, (200, s)).astype(np.float32)
    mated_own = rng.integers(0, s, 200)
    mated[np.arange(200), mated_own] += rng.normal(0.35, 0.15, 200).astype(np.float32)
    return nonmated, own, mated, mated_own


def test_expectations_agree_with_explicit_random_galleries(
    scores: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Draw many explicit galleries, search them, count: the averages converge on the
    closed forms."""
    nm_scores, own, m_scores, m_own = scores
    nonmated = NonMated(nm_scores, own)
    mated = Mated.from_scores(m_scores, m_own)
    rng = np.random.default_rng(2)
    g, threshold, draws = 12, 0.45, 3000
    false_alarms = hits_at_t = firsts = 0
    nm_trials = m_trials = 0
    for _ in range(draws):
        gallery = rng.choice(60, g, replace=False)
        enrolled = np.zeros(60, bool)
        enrolled[gallery] = True
        strangers = ~enrolled[own]
        best = nm_scores[strangers][:, gallery].max(axis=1)
        false_alarms += int((best >= threshold).sum())
        nm_trials += int(strangers.sum())
        searched = enrolled[m_own]
        rows = m_scores[searched][:, gallery]
        top = gallery[rows.argmax(axis=1)]
        correct = top == m_own[searched]
        firsts += int(correct.sum())
        hits_at_t += int((correct & (rows.max(axis=1) >= threshold)).sum())
        m_trials += int(searched.sum())
    # the closed forms weight probes equally; so do uniform galleries (every probe's own
    # subject is drawn equally often)
    assert nonmated.fpir(threshold, g) == pytest.approx(false_alarms / nm_trials, rel=0.05)
    assert mated.rank1(g) == pytest.approx(firsts / m_trials, rel=0.02)
    assert mated.dir(threshold, g) == pytest.approx(hits_at_t / m_trials, rel=0.03)


def test_threshold_inverts_fpir(scores: tuple[np.ndarray, ...]) -> None:
    nonmated = NonMated(scores[0], scores[1])
    for g in (1, 5, 30, 59):
        for f in (0.1, 0.01):
            t = nonmated.threshold(f, g)
            assert nonmated.fpir(t, g) <= f < nonmated.fpir(t - 1e-4, g)
    table = calibrate(nonmated, [1, 10, 59], [0.1, 0.01])
    assert table[0][0] < table[1][0] < table[2][0]  # more subjects, higher threshold
    assert table[1][0] < table[1][1]  # lower FPIR, higher threshold


def test_one_subject_fpir_is_the_false_accept_rate(scores: tuple[np.ndarray, ...]) -> None:
    nm_scores, own = scores[0], scores[1].copy()
    own[::3] = -1  # a probe whose person is not in the pool: every subject is a stranger
    nonmated = NonMated(nm_scores, own)
    mask = np.ones_like(nm_scores, bool)
    has = own >= 0
    mask[np.flatnonzero(has), own[has]] = False
    per_probe = [(row[m] >= 0.4).mean() for row, m in zip(nm_scores, mask, strict=True)]
    assert nonmated.fpir(0.4, 1) == pytest.approx(float(np.mean(per_probe)))


@pytest.mark.parametrize("method", ["max", "topk", "centroid"])
def test_subject_scores_match_the_gallery(method: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    templates = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5])]
    scoring = Scoring.parse(method)
    gallery = Gallery(16, scoring)
    for k, t in enumerate(templates):
        gallery.add(str(k), x[t])
    probes = np.arange(6, 40)
    np.testing.assert_allclose(
        subject_scores(x, probes, templates, scoring, block=7),
        gallery.scores(x[probes]),
        atol=1e-6,
    )


def fake_lfw(counts: dict[str, int]) -> LfwFaces:
    """An LfwFaces with ``counts[name]`` images per person (random unit embeddings)."""
    keys = sorted(f"{name}_{i:04d}" for name, n in counts.items() for i in range(1, n + 1))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(len(keys), 8)).astype(np.float32)
    n = len(keys)
    return LfwFaces(
        keys=keys,
        embeddings=x / np.linalg.norm(x, axis=1, keepdims=True),
        boxes=np.tile(np.array([50, 50, 150, 150], np.float32), (n, 1)),
        landmarks=np.zeros((n, 5, 2), np.float32),
        scores=np.ones(n, np.float32),
        found=np.ones(n, bool),
        detected=np.ones(n, np.int32),
        sharpness=np.full(n, 100.0, np.float32),
        image_size=np.full((n, 2), 250, np.int32),
    )


def test_protocol_identities_halves_and_enrolment() -> None:
    counts = {"Sepp_Blatter": 2, "Joseph_Blatter": 1, "Ann": 5, "Bob": 1, "Cy": 3, "Di": 1}
    faces = fake_lfw(counts)
    merged = Identities.of(faces)
    assert "Sepp_Blatter" not in merged.names and len(merged) == 5  # one person, two names
    assert len(merged.images[merged.names.index("Joseph_Blatter")]) == 3
    assert len(Identities.of(faces, merge=False)) == 6
    half = split_halves(merged, seed=0)
    assert sorted(np.bincount(half)) == [2, 3]
    by_count = sorted(zip(merged.counts(), half, strict=True))
    assert len({h for c, h in by_count if c == 1}) == 2  # one-photo people in both halves
    pool = np.arange(len(merged))
    three = enrol(merged, pool, 3)
    sizes = {merged.names[s]: len(t) for s, t in enumerate(three.templates)}
    assert sizes == {"Ann": 3, "Bob": 1, "Cy": 2, "Di": 1, "Joseph_Blatter": 2}
    assert len(three.probes) == (5 - 3) + (3 - 2) + (3 - 2)  # the rest of each person
    one = enrol(merged, pool, 1)
    assert all(len(t) == 1 for t in one.templates) and len(one.probes) == 4 + 2 + 2
    for s, t in enumerate(three.templates):  # no probe is also a template of its subject
        assert not set(three.probes[three.probe_subject == s]) & set(t)
