"""``facerec bench lfw-openset``: run the LFW open-set protocol, write JSON and a DET plot,
and measure the model card's identification and 1:1 FAR thresholds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facerec.evaluation.lfw_faces import LfwFaces, load_or_embed
from facerec.evaluation.measure import machine
from facerec.evaluation.openset import det_curve
from facerec.evaluation.openset_lfw import (
    SAME_PERSON,
    TABLE_FPIRS,
    TABLE_SIZES,
    FoldResult,
    Identities,
    Searches,
    consistency_rates,
    enrol,
    evaluate_fold,
    pooled,
    refusals,
    searches,
    split_halves,
    table_for,
)
from facerec.evaluation.plots import figure
from facerec.matching import DEFAULT_SCORING, SCORE_METHODS, Scoring
from facerec.openset import ThresholdTable
from facerec.pipeline import FacePipeline
from facerec.selection import DEFAULT_GATES, EnrolmentGates

log = logging.getLogger(__name__)
REPORT_FPIRS = (1e-1, 1e-2, 1e-3)
GALLERIES: tuple[int | None, ...] = (100, 1000, None)  # None: every identity of the half
ENROLMENTS = (1, 3)
CARD_ENROLMENT = 3
FARS = {"1e-3": 1e-3, "1e-4": 1e-4}


def _label(g: int | None) -> str:
    return "all" if g is None else str(g)


def run_openset(
    pipeline: FacePipeline,
    data_dir: Path,
    out_dir: Path,
    pad: int = 50,
    seed: int = 0,
    k: int = 2,
    gates: EnrolmentGates = DEFAULT_GATES,
    merge: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole benchmark; writes ``openset.json``'s content (returned), ``det.png`` and
    the embedding cache ``embeddings.npz`` to ``out_dir``. ``merge``: count the people LFW
    files under two names as one (:data:`SAME_PERSON`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = load_or_embed(pipeline, data_dir, out_dir / "embeddings.npz", pad, progress)
    ids = Identities.of(faces, merge=merge)
    half = split_halves(ids, seed)
    pools = [np.flatnonzero(half == h) for h in (0, 1)]
    scorings = [Scoring(m, k) for m in SCORE_METHODS]
    default = Scoring(DEFAULT_SCORING.method, k)
    results: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]] = {}
    steps = [(s, e, False) for s in scorings for e in ENROLMENTS] + [(default, 3, True)]
    bar = tqdm(steps, desc="open-set", unit="setting", disable=not progress)
    for scoring, count, gated in bar:
        use_gates = gates if gated else None
        folds: dict[str, list[FoldResult]] = {_label(g): [] for g in GALLERIES}
        evaluations: list[tuple[Searches, ThresholdTable]] = []
        for h in (0, 1):
            cal = searches(faces, ids, pools[h], count, scoring, use_gates, mated=False)
            table = table_for(cal.nonmated, scoring.method)
            ev = searches(faces, ids, pools[1 - h], count, scoring, use_gates)
            evaluations.append((ev, table))
            for g in GALLERIES:
                size = len(pools[1 - h]) if g is None else g
                folds[_label(g)].append(evaluate_fold(ev, table, size, REPORT_FPIRS))
        name = f"{scoring.method}{'+gates' if gated else ''}"
        entry: dict[str, Any] = {g: pooled(f, REPORT_FPIRS) for g, f in folds.items()}
        if gated:
            entry["gated_fallbacks"] = sum(ev.enrolment.gated_fallbacks for ev, _ in evaluations)
        results.setdefault(name, {})[str(count)] = entry
        for g in GALLERIES:
            curves[f"{name}|{count}|{_label(g)}"] = _pooled_det(evaluations, g)
    bar.close()

    card = _card_calibration(faces, ids, scorings)
    headline = results[default.method][str(CARD_ENROLMENT)]
    doc: dict[str, Any] = {
        "default_method": default.method,
        "topk_k": k,
        "galleries": [
            {
                "G": _label(g),
                "gallery_size": headline[_label(g)]["gallery_size"],
                "enrolment": f"up to {CARD_ENROLMENT} images",
                "method": default.method,
                "rank1": headline[_label(g)]["rank1"],
                "dir_at_fpir": headline[_label(g)]["dir_at_fpir"],
                "thresholds": headline[_label(g)]["thresholds"],
                "calibrated": headline[_label(g)]["calibrated"],
            }
            for g in GALLERIES
        ],
        "results": results,
        "protocol": _protocol(faces, ids, pools, seed, merge),
        "quality_gates": {
            "settings": asdict(gates),
            "images": len(faces),
            "refused_by_first_failing_gate": refusals(faces, gates),
            "consistency": consistency_rates(faces, ids, gates, seed),
        },
        "card": card,
        "settings": {
            "model": pipeline.card.name,
            "precision": pipeline.config.precision,
            "alignment": pipeline.config.alignment,
            "flip": pipeline.config.flip,
            "detector": asdict(pipeline.config.detector),
            "pad": pad,
        },
        "machine": machine(),
    }
    quality = doc["quality_gates"]
    quality["refused_fraction"] = sum(quality["refused_by_first_failing_gate"].values()) / len(
        faces
    )
    plot_det(curves, default.method, out_dir / "det.png")
    return doc


def _pooled_det(
    evaluations: Sequence[tuple[Searches, ThresholdTable]], g: int | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """DET points pooled over the evaluation halves, and the calibrated operating points."""
    thresholds = np.linspace(0.3, 1.0, 281)
    fp, fn, wn, wm = [], [], [], []
    points = []
    for ev, table in evaluations:
        size = ev.subjects if g is None else g
        a, b = det_curve(ev.nonmated, ev.mated, size, thresholds)
        fp.append(a * len(ev.nonmated))
        fn.append(b * len(ev.mated))
        wn.append(len(ev.nonmated))
        wm.append(len(ev.mated))
        for f in REPORT_FPIRS:
            t, _ = table.threshold(f, size)
            first = ev.mated.first(size)
            points.append(
                (ev.nonmated.fpir(t, size), 1.0 - float((first * (ev.mated.own >= t)).mean()))
            )
    return np.sum(fp, axis=0) / sum(wn), np.sum(fn, axis=0) / sum(wm), points


def _card_calibration(
    faces: LfwFaces, ids: Identities, scorings: Sequence[Scoring]
) -> dict[str, Any]:
    """Thresholds for the model card, measured on every identity (both halves)."""
    pool = np.arange(len(ids))
    tables = {}
    for scoring in scorings:
        s = searches(faces, ids, pool, CARD_ENROLMENT, scoring, mated=False)
        tables[scoring.method] = table_for(
            s.nonmated,
            scoring.method,
            templates=f"up to {CARD_ENROLMENT} images per subject",
            source=f"non-mated searches of all {len(faces)} LFW images against the other "
            f"{len(ids) - 1} identities, expected over random galleries",
        ).to_dict()
    return {
        "identification": tables,
        "verification_far": verification_far(faces, ids),
        "table_sizes": list(TABLE_SIZES),
        "table_fpirs": list(TABLE_FPIRS),
    }


def verification_far(faces: LfwFaces, ids: Identities, floor: float = 0.3) -> dict[str, Any]:
    """1:1 thresholds at FAR 1e-3 and 1e-4 over every different-person image pair, and the
    ten most similar different-person pairs (where LFW's labels are worth a look)."""
    owner = np.empty(len(faces), np.intp)
    for i, rows in enumerate(ids.images):
        owner[rows] = i
    x = faces.embeddings
    tail: list[np.ndarray] = []
    top: list[tuple[float, int, int]] = []
    impostors = 0
    for lo in range(0, len(x), 1024):
        sims = x[lo : lo + 1024] @ x.T
        rows = np.arange(lo, min(lo + 1024, len(x)))
        keep = (np.arange(len(x))[None, :] > rows[:, None]) & (owner[rows][:, None] != owner)
        impostors += int(keep.sum())
        tail.append(sims[keep & (sims >= floor)])
        # this block's ten most similar pairs (a model whose strangers all score high, such
        # as dlib's, has millions of pairs above any fixed level)
        masked = np.where(keep, sims, -np.inf).ravel()
        best = np.argpartition(masked, -10)[-10:] if masked.size > 10 else np.arange(masked.size)
        for flat in best[np.isfinite(masked[best])]:
            r, c = divmod(int(flat), len(x))
            top.append((float(masked[flat]), int(rows[r]), c))
    scores = np.sort(np.concatenate(tail))[::-1]
    most = int(np.floor(min(FARS.values()) * impostors))
    if most >= len(scores) and floor > -1.0:  # a small set: keep every pair
        return verification_far(faces, ids, floor=-1.0)
    out: dict[str, Any] = {"impostor_pairs": impostors, "thresholds": {}}
    for name, far in FARS.items():
        allowed = int(np.floor(far * impostors))
        out["thresholds"][name] = round(float(scores[allowed]) + 1e-6, 6)
    out["source"] = (
        f"all {impostors:,} different-person pairs of the {len(faces)} LFW images "
        f"({len(ids)} identities, as in the open-set protocol)"
    )
    out["most_similar_pairs"] = [
        {"a": faces.keys[i], "b": faces.keys[j], "similarity": round(v, 4)}
        for v, i, j in sorted(top, reverse=True)[:10]
    ]
    return out


def _protocol(
    faces: LfwFaces, ids: Identities, pools: Sequence[np.ndarray], seed: int, merge: bool
) -> dict[str, Any]:
    counts = ids.counts()
    halves = []
    for pool in pools:
        c = counts[pool]
        halves.append(
            {
                "identities": len(pool),
                "images": int(c.sum()),
                "identities_with_2_or_more_images": int((c >= 2).sum()),
                "mated_probes": {str(e): len(enrol(ids, pool, e).probes) for e in ENROLMENTS},
            }
        )
    return {
        "images": len(faces),
        "identities": len(ids),
        "merged_names": SAME_PERSON if merge else {},
        "split": "identities sorted by image count, assigned alternately in a random order "
        f"(seed {seed})",
        "halves": halves,
        "calibration": "thresholds from one half's non-mated searches, applied to the other "
        "half; then swapped; figures pooled over both",
        "galleries": "random G-subsets of the evaluation half's identities; metrics are exact "
        "expectations over all of them",
        "enrolment": "first min(E, n - 1) images of a person with n >= 2 images, the rest are "
        "mated probes; one-image people are enrolled with it (distractors)",
        "nonmated": "every image of a person not in the gallery",
        "dir_at_fpir": "threshold set on the evaluation half's own non-mated searches (what the "
        "score distributions allow)",
        "calibrated": "threshold from the other half's table, interpolated at G (what a "
        "deployment gets): measured FPIR and DIR",
    }


def plot_det(
    curves: dict[str, tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]],
    method: str,
    path: Path,
) -> None:
    """Two panels: the default method by gallery size and enrolment, and every method at
    G = 1,000 with up to 3 images; FNIR against FPIR, both logarithmic."""
    with figure(path, 1, 2, figsize=(12, 5), dpi=110) as (fig, axes):
        colours = {"100": "tab:blue", "1000": "tab:orange", "all": "tab:green"}
        for g, colour in colours.items():
            for count, style in (("3", "-"), ("1", ":")):
                fp, fn, points = curves[f"{method}|{count}|{g}"]
                axes[0].plot(fp, fn, style, color=colour, label=f"G={g}, {count} image(s)")
                if count == "3":
                    axes[0].plot(*zip(*points, strict=True), "o", color=colour, ms=4)
        axes[0].set_title(f"{method} scoring (dots: calibrated thresholds, held-out half)")
        for name in sorted({k.split("|")[0] for k in curves}):
            fp, fn, _ = curves[f"{name}|3|1000"]
            axes[1].plot(fp, fn, label=f"{name}, up to 3 images")
        fp, fn, _ = curves[f"{method}|1|1000"]
        axes[1].plot(fp, fn, ":", color="grey", label="1 image")
        axes[1].set_title("G = 1,000: subject scoring")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-4, 1)
            ax.set_ylim(5e-3, 1)
            ax.set_xlabel("FPIR (strangers matched)")
            ax.set_ylabel("FNIR (enrolled people missed)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower left")
        fig.suptitle("LFW open-set identification (DET)")


def card_thresholds(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``--update-card`` stores for the variant: identification tables and 1:1 FAR
    thresholds."""
    card = doc["card"]
    far = card["verification_far"]
    return {
        "identification": card["identification"],
        "verification_far": {"thresholds": far["thresholds"], "source": far["source"]},
    }
