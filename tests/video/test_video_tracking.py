"""The tracker and the identity vote on their own: boxes and candidates in, ids and names
out (no models: these are the rules, checked case by case)."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.matching import Candidate
from facerec.openset import OperatingPoint
from facerec.video.identity import IdentityVote, VoteConfig, inside_fraction, vote_weight
from facerec.video.tracker import BoxFilter, Tracker, TrackerConfig, greedy_pairs, iou_matrix

MARKS = np.zeros((5, 2), np.float32)


def box(cx: float, cy: float, side: float = 80.0) -> np.ndarray:
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def step(tracker: Tracker, boxes: list[np.ndarray], t: float) -> dict[int, int]:
    """One detection round; returns detection index -> track id (new tracks started)."""
    tracker.predict(t)
    arr = np.array(boxes, np.float32).reshape(-1, 4)
    assoc = tracker.associate(arr, np.ones(len(arr), np.float32), np.zeros((len(arr), 5, 2)), t)
    out = {c: tr.id for tr, c in assoc.matched}
    for c in assoc.unmatched:
        out[c] = tracker.start(arr[c], 1.0, MARKS, t).id
    tracker.sweep(t)
    return out


def test_iou_and_greedy_pairs() -> None:
    a = np.array([box(50, 50), box(200, 50)])
    b = np.array([box(205, 50), box(55, 50), box(400, 400)])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 1] == pytest.approx((75 * 80) / (2 * 6400 - 75 * 80))
    assert iou[0, 2] == 0.0
    assert greedy_pairs(iou, 0.3) == [(0, 1), (1, 0)] or greedy_pairs(iou, 0.3) == [(1, 0), (0, 1)]
    assert greedy_pairs(iou, 0.99) == []


def test_filter_learns_velocity_and_predicts_through_a_gap() -> None:
    f = BoxFilter(box(100, 100), 0.0, TrackerConfig())
    for k in range(1, 11):  # 200 px/s to the right, 10 frames/s
        f.predict(k * 0.1)
        f.update(box(100 + 20 * k, 100))
    f.predict(1.5)  # half a second unseen
    cx = (f.box[0] + f.box[2]) / 2
    assert cx == pytest.approx(100 + 200 * 1.5, abs=8)


def test_ids_are_stable_and_never_reused() -> None:
    tracker = Tracker()
    ids = step(tracker, [box(100, 100), box(300, 100)], 0.0)
    assert sorted(ids.values()) == [1, 2]
    for k in range(1, 6):  # both walk 10 px per frame, detections listed in another order
        again = step(tracker, [box(300 - 10 * k, 100), box(100 + 10 * k, 100)], k * 0.1)
        assert again == {0: ids[1], 1: ids[0]}
    for k in range(6, 45):  # the first one leaves; after coast + window (3.5 s) it ends
        step(tracker, [box(300 - 10 * k, 100)], k * 0.1)
    assert sorted(tracker.tracks) == [ids[1]]
    assert step(tracker, [box(100, 300)], 5.0) == {0: 3}  # a newcomer gets a new id


def test_crossing_tracks_keep_their_ids() -> None:
    tracker = Tracker()
    first = step(tracker, [box(100, 100), box(400, 110)], 0.0)
    seen: dict[int, list[float]] = {first[0]: [], first[1]: []}
    for k in range(1, 31):  # they cross at x = 250 (at k = 15), 10 px apart vertically
        t = k / 15
        a, b = box(100 + 10 * k, 100), box(400 - 10 * k, 110)
        ids = step(tracker, [a, b], t)
        seen[ids[0]].append(float(a[0]))
        seen[ids[1]].append(float(b[0]))
    assert len(seen) == 2
    xs = seen[first[0]]
    assert xs == sorted(xs)  # the track that started left kept moving right


def test_lost_track_is_continued_by_appearance_not_by_a_stranger() -> None:
    cfg = TrackerConfig(coast=0.2, reattach_window=2.0)
    tracker = Tracker(cfg)
    track = tracker.start(box(100, 100), 1.0, MARKS, 0.0)
    me = np.eye(8, dtype=np.float32)[0]
    stranger = np.eye(8, dtype=np.float32)[1]
    track.observe_appearance(me, 1.0)
    for k in range(1, 6):
        step(tracker, [], k * 0.1)
    assert track.state == "lost"
    far = np.array([box(600, 400)])
    assert tracker.continuations(stranger[None], far) == []
    assert tracker.continuations(me[None], far) == [(0, track)]  # anywhere, same face
    near = np.array([box(110, 100)])
    half = (0.3 * me + 0.95 * stranger)[None]  # a partial view: weakly similar
    half /= np.linalg.norm(half)
    assert tracker.continuations(half, far) == []
    assert tracker.continuations(half, near) == [(0, track)]  # near where it was heading
    for k in range(6, 30):
        step(tracker, [], k * 0.1)
    assert track.state == "ended" and track.id not in tracker.tracks


AT_04 = OperatingPoint(0.4, None, 2, "centroid", "explicit")


def test_vote_names_after_enough_agreeing_votes_and_does_not_flicker() -> None:
    vote = IdentityVote(VoteConfig(min_votes=2, min_share=0.6, switch_share=0.75))
    assert not vote.add([Candidate("ann", 0.8)], AT_04, 1.0)
    assert vote.subject is None  # one vote is not enough
    assert vote.add([Candidate("ann", 0.7)], AT_04, 1.0)
    assert vote.subject == "ann" and vote.support == 2
    assert vote.similarity == pytest.approx(0.75)
    for _ in range(3):  # a run of stray votes for someone else does not move the name
        assert not vote.add([Candidate("bob", 0.9)], AT_04, 1.0)
        assert vote.subject == "ann"
    for _ in range(12):  # unless they come to hold the switching share
        vote.add([Candidate("bob", 0.9)], AT_04, 1.0)
    assert vote.subject == "bob"


def test_vote_names_from_the_first_clear_views_after_cut_off_ones() -> None:
    """A face entering cut off by the frame's edge matches no one at first: those votes
    do not hold its name back once two clear views agree (the latest three votes decide
    the first name), and a later minority of unknown votes does not unname it."""
    vote = IdentityVote(VoteConfig(min_votes=2, min_share=0.6, name_window=3))
    for weight in (0.35, 0.45, 0.5, 0.6):  # growing into view, below the threshold
        assert not vote.add([Candidate("ann", 0.3)], AT_04, weight)
    assert not vote.add([Candidate("ann", 0.7)], AT_04, 0.7)
    assert vote.subject is None  # one clear view is not enough
    assert vote.add([Candidate("ann", 0.75)], AT_04, 0.9)  # all votes: 1.6 of 3.5, 46 %
    assert vote.subject == "ann" and vote.support == 2
    for _ in range(3):
        assert not vote.add([Candidate("ann", 0.2)], AT_04, 1.0)  # looks away
    assert vote.subject == "ann"
    stranger = IdentityVote(VoteConfig(min_votes=2, min_share=0.6, name_window=3))
    for similarity in (0.2, 0.45, 0.3, 0.2, 0.45, 0.3):  # a stray match now and then
        stranger.add([Candidate("bob", similarity)], AT_04, 1.0)
        assert stranger.subject is None


def test_vote_stays_unknown_below_threshold_and_weighs_area() -> None:
    vote = IdentityVote()
    for _ in range(5):
        vote.add([Candidate("ann", 0.3)], AT_04, 1.0)
    assert vote.subject is None and vote.last_similarity == pytest.approx(0.3)
    cfg = VoteConfig(reference_area=100.0)
    assert vote_weight(0.5, 50.0, cfg) == pytest.approx(0.25)
    assert vote_weight(1.0, 400.0, cfg) == pytest.approx(1.0)
    half_out = np.array([-40.0, 10.0, 40.0, 90.0])  # half beyond the left edge
    assert inside_fraction(half_out, 640, 480) == pytest.approx(0.5)
    assert inside_fraction(box(100, 100), 640, 480) == 1.0
    assert vote_weight(1.0, 400.0, cfg, inside_fraction(half_out, 640, 480)) == 0.5
    # big clear views outweigh a small one that disagrees
    vote = IdentityVote(VoteConfig(min_votes=2))
    vote.add([Candidate("bob", 0.5)], AT_04, vote_weight(0.9, 20.0, cfg))
    vote.add([Candidate("ann", 0.8)], AT_04, 1.0)
    vote.add([Candidate("ann", 0.8)], AT_04, 1.0)
    assert vote.subject == "ann"


def test_a_coasting_prediction_does_not_take_a_face_another_track_follows() -> None:
    """A walks right and vanishes; its prediction drifts onto B, who stood still and now
    steps right, onto the very spot: B keeps its face although A's prediction overlaps it
    more than B's own (tracks seen in the last round choose first)."""
    tracker = Tracker(TrackerConfig(coast=1.0))
    ids = step(tracker, [box(100, 100), box(400, 100)], 0.0)
    a, b = ids[0], ids[1]
    for k in range(1, 11):  # A at 208 px/s; B still
        assert step(tracker, [box(100 + 20.8 * k, 100), box(400, 100)], k * 0.1) == {0: a, 1: b}
    for k in range(11, 15):  # A is gone
        assert step(tracker, [box(400, 100)], k * 0.1) == {0: b}
    assert step(tracker, [box(412, 100)], 1.5) == {0: b}  # where A's prediction is now
