"""A synthetic video with ground truth, made from the real LFW faces in ``tests/data``.

Four people move across a textured background: two walk across the whole frame in
opposite directions and cross (one passes in front of the other, hiding it for a moment),
one of them also passes behind a pillar, a third comes in from the top and stays, and a
fourth, who is in no gallery, comes in late. Each person is a photo (a face crop
blended in with a soft elliptical edge) whose placement is known, so every face's identity,
box and visible fraction are known for every frame.

Positions are fractions of the frame, times fractions of the duration, so one scene renders
at any size, rate and length (the tests use a short small one, the benchmark 640x480 and
1280x720).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerec.imaging.decode import read_image

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"  # the bundled LFW faces

# (person, photo used in the video, photos enrolled in the gallery); the last one is
# never enrolled. The video's photo is never one of the enrolled ones.
CAST = [
    ("Ben_Affleck", "gallery/Ben_Affleck_0005.jpg", ["0002", "0003", "0004", "0006"]),
    ("John_Kerry", "gallery/John_Kerry_0005.jpg", ["0001", "0003", "0004", "0009"]),
    ("Howard_Dean", "gallery/Howard_Dean_0005.jpg", ["0001", "0002", "0003", "0004"]),
    ("Aaron_Eckhart", "lfw/Aaron_Eckhart_0001.jpg", []),
]
# Sprite centre keyframes (time, x, y), as fractions of duration, width and height; a
# person is in the scene from the first keyframe's time to the last's.
PATHS = {
    "Ben_Affleck": [(0.04, -0.16, 0.36), (0.74, 1.16, 0.36)],
    "John_Kerry": [(0.10, 1.16, 0.50), (0.86, -0.16, 0.50)],
    "Howard_Dean": [(0.28, 0.11, -0.22), (0.46, 0.11, 0.28), (1.01, 0.14, 0.30)],
    "Aaron_Eckhart": [(0.52, 0.56, 1.22), (0.72, 0.46, 0.70), (1.01, 0.43, 0.68)],
}
DEPTH = {"Ben_Affleck": 0, "John_Kerry": 1, "Howard_Dean": 0, "Aaron_Eckhart": 0}
PILLAR = (0.25, 0.45)  # x range, in front of everyone; wider than a face
SPRITE = 0.32  # sprite side as a fraction of the frame height


@dataclass(frozen=True)
class TruthFace:
    """One person's face in one frame: box float[4] (x1, y1, x2, y2) in frame pixels,
    and the fraction of that box that is inside the frame and not hidden."""

    person: str
    box: tuple[float, float, float, float]
    visible: float


@dataclass
class Scene:
    frames: list[np.ndarray]  # RGB uint8[H, W, 3]
    truth: list[list[TruthFace]]  # per frame, every person in the scene
    fps: float

    @property
    def people(self) -> list[str]:
        return [name for name, _, _ in CAST]

    def truth_json(self) -> list[list[dict[str, object]]]:
        return [[f.__dict__ for f in frame] for frame in self.truth]


def cast_faces() -> dict[str, np.ndarray]:
    """The photo each person appears with in the video (RGB uint8[150, 150, 3])."""
    return {name: read_image(DATA / photo) for name, photo, _ in CAST}


def write_gallery(root: Path) -> Path:
    """The enrolled people's other photos, one folder per person (``--gallery`` layout)."""
    for name, _, numbers in CAST:
        if not numbers:
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in numbers:
            src = DATA / "gallery" / f"{name}_{n}.jpg"
            (folder / src.name).write_bytes(src.read_bytes())
    return root


def _position(keys: Sequence[tuple[float, float, float]], t: float) -> tuple[float, float] | None:
    if t < keys[0][0] or t > keys[-1][0]:
        return None
    for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(keys):
        if t0 <= t <= t1:
            a = (t - t0) / (t1 - t0)
            return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
    return None


def _background(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(70, 190, (height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    fine = rng.integers(-25, 25, (height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    bg = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    bg += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)[:, :, None]
    return np.clip(cv2.GaussianBlur(bg, (0, 0), 2), 0, 255).astype(np.uint8)


def _soft_ellipse(side: int) -> np.ndarray:
    """float32[side, side] alpha: 1 inside an ellipse filling the sprite, feathered edge."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    r = np.sqrt(((xx - side / 2) / (0.47 * side)) ** 2 + ((yy - side / 2) / (0.5 * side)) ** 2)
    alpha: np.ndarray = np.clip((1.0 - r) / 0.08, 0.0, 1.0).astype(np.float32)
    return alpha


def render(
    face_boxes: dict[str, Sequence[float]],
    width: int = 640,
    height: int = 480,
    fps: float = 15.0,
    duration: float = 10.0,
    seed: int = 0,
) -> Scene:
    """The scene at ``width`` x ``height``, ``fps`` frames/s for ``duration`` seconds.

    ``face_boxes``: each person's face box inside their 150x150 photo (x1, y1, x2, y2),
    e.g. measured once by the detector on the still photo; it is scaled and moved with
    the sprite to give the ground-truth box.
    """
    faces = cast_faces()
    side = round(SPRITE * height)
    alpha = _soft_ellipse(side)
    sprites = {
        name: cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        for name, img in faces.items()
    }
    background = _background(width, height, seed)
    px0, px1 = int(PILLAR[0] * width), int(PILLAR[1] * width)
    rng = np.random.default_rng(seed + 1)
    frames: list[np.ndarray] = []
    truth: list[list[TruthFace]] = []
    count = round(duration * fps)
    order = sorted(PATHS, key=lambda n: DEPTH[n])
    for k in range(count):
        t = k / fps / duration
        canvas = background.astype(np.float32)
        owner = np.full((height, width), -1, np.int16)  # who is seen at each pixel
        placed: dict[str, tuple[int, int]] = {}
        for index, name in enumerate(order):
            pos = _position(PATHS[name], t)
            if pos is None:
                continue
            x0 = round(pos[0] * width - side / 2)
            y0 = round(pos[1] * height - side / 2)
            placed[name] = (x0, y0)
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + side, width), min(y0 + side, height)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
            src = sprites[name][cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            region = canvas[cy0:cy1, cx0:cx1]
            canvas[cy0:cy1, cx0:cx1] = a * src + (1 - a) * region
            mine = owner[cy0:cy1, cx0:cx1]
            mine[a[:, :, 0] > 0.5] = index
        canvas[:, px0:px1] = (70, 64, 60)  # the pillar, in front of everyone
        canvas[:, px0:px1:6] = (90, 84, 78)
        owner[:, px0:px1] = -2
        canvas += rng.normal(0.0, 2.0, canvas.shape).astype(np.float32)  # sensor noise
        frames.append(np.clip(canvas, 0, 255).astype(np.uint8))
        faces_now = []
        for index, name in enumerate(order):
            if name not in placed:
                continue
            x0, y0 = placed[name]
            s = side / 150.0
            fb = face_boxes[name]
            box = (x0 + fb[0] * s, y0 + fb[1] * s, x0 + fb[2] * s, y0 + fb[3] * s)
            bx0, by0 = round(box[0]), round(box[1])
            bx1, by1 = round(box[2]), round(box[3])
            area = max(1, (bx1 - bx0) * (by1 - by0))
            ix0, iy0, ix1, iy1 = max(bx0, 0), max(by0, 0), min(bx1, width), min(by1, height)
            seen = 0
            if ix0 < ix1 and iy0 < iy1:
                seen = int((owner[iy0:iy1, ix0:ix1] == index).sum())
            faces_now.append(TruthFace(name, box, seen / area))
        truth.append(faces_now)
    return Scene(frames, truth, fps)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode ``frames`` (RGB) with OpenCV's FFmpeg: MPEG-4 Part 2 in ``.mp4``, Motion
    JPEG in ``.avi``."""
    fourcc = "MJPG" if path.suffix == ".avi" else "mp4v"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def write_truth(path: Path, scene: Scene) -> Path:
    path.write_text(json.dumps({"fps": scene.fps, "frames": scene.truth_json()}))
    return path


# -- scoring a run against the ground truth -------------------------------------------

TARGET = 0.5  # a face at least this visible must be found; a less visible one may be


@dataclass
class HypFace:
    """One face a run reported in one frame."""

    track_id: int
    box: tuple[float, float, float, float]
    match: str | None


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def evaluate(
    scene: Scene,
    runs: dict[int, list[HypFace]],
    times: dict[int, float] | None = None,
    enrolled: Sequence[str] | None = None,
    min_iou: float = 0.5,
) -> dict[str, Any]:
    """CLEAR-MOT and identity figures of a run: ``runs`` maps frame number to the faces
    reported for it (frames not processed are left out: dropped frames are not scored).

    A face at least ``TARGET`` visible is a target; a reported face overlapping a less
    visible one is neither a hit nor a false positive. Correspondences persist while
    their IoU stays >= ``min_iou``; an ID switch is a target matched to another track than
    the last time. IDF1 uses the best one-to-one mapping of people to track ids. The
    right name of a person is their own if enrolled, else null. Time to name: from the
    first frame a person is at least ``TARGET`` visible (processed or not) to the first
    processed frame naming them correctly, in stream seconds: ``times`` maps a processed
    frame to when its result was ready (default: its own time, frame / fps).
    """
    names = set(enrolled if enrolled is not None else [n for n, _, p in CAST if p])
    last: dict[str, int] = {}
    matches = fn = fp = idsw = targets = hyps_counted = 0
    right_names = named_wrong = 0
    overlap: dict[tuple[str, int], int] = {}
    gt_counts: dict[str, int] = {}
    hyp_counts: dict[int, int] = {}
    seen_at: dict[str, float] = {}
    missed: list[float] = []  # the visible fraction of each target not found
    named_at: dict[str, float] = {}
    for k, frame in enumerate(scene.truth):
        for g in frame:
            if g.visible >= TARGET and g.person not in seen_at:
                seen_at[g.person] = k / scene.fps
    for k in sorted(runs):
        t = times[k] if times else k / scene.fps
        gts = scene.truth[k]
        hyps = runs[k]
        pairs: dict[int, int] = {}  # gt index -> hyp index
        used: set[int] = set()
        for gi, g in enumerate(gts):  # keep last frame's correspondences
            for hi, h in enumerate(hyps):
                kept = last.get(g.person) == h.track_id and hi not in used
                if kept and _iou(g.box, h.box) >= min_iou:
                    pairs[gi] = hi
                    used.add(hi)
        scored = sorted(
            ((_iou(g.box, h.box), gi, hi) for gi, g in enumerate(gts) for hi, h in enumerate(hyps)),
            reverse=True,
        )
        for iou, gi, hi in scored:
            if iou < min_iou:
                break
            if gi not in pairs and hi not in used:
                pairs[gi] = hi
                used.add(hi)
        for gi, g in enumerate(gts):
            target = g.visible >= TARGET
            paired = pairs.get(gi)
            if not target:
                continue  # a reported face here is neither hit nor false positive
            targets += 1
            gt_counts[g.person] = gt_counts.get(g.person, 0) + 1
            if paired is None:
                fn += 1
                missed.append(round(g.visible, 2))
                continue
            h = hyps[paired]
            matches += 1
            if g.person in last and last[g.person] != h.track_id:
                idsw += 1
            last[g.person] = h.track_id
            overlap[(g.person, h.track_id)] = overlap.get((g.person, h.track_id), 0) + 1
            right = g.person if g.person in names else None
            if h.match == right:
                right_names += 1
                if right is not None and g.person not in named_at:
                    named_at[g.person] = t
            elif h.match is not None:
                named_wrong += 1
        for hi, h in enumerate(hyps):
            gi_of = {v: key for key, v in pairs.items()}
            truth = gi_of.get(hi)
            if truth is not None and gts[truth].visible < TARGET:
                continue
            hyps_counted += 1
            hyp_counts[h.track_id] = hyp_counts.get(h.track_id, 0) + 1
            if truth is None:
                fp += 1
    people = sorted(gt_counts)
    ids = sorted(hyp_counts)
    best = 0
    for combo in itertools.permutations([*ids, *[None] * len(people)], len(people)):
        total = sum(overlap.get((p, i), 0) for p, i in zip(people, combo, strict=True) if i)
        best = max(best, total)
    idf1 = 2 * best / (targets + hyps_counted) if targets + hyps_counted else 1.0
    ttn = {p: round(named_at[p] - seen_at[p], 3) for p in named_at if p in seen_at}
    return {
        "targets": targets,
        "matches": matches,
        "false_negatives": fn,
        "false_positives": fp,
        "id_switches": idsw,
        "mota": 1 - (fn + fp + idsw) / targets if targets else 1.0,
        "idf1": idf1,
        "identity_accuracy": right_names / matches if matches else 0.0,
        "identity_recall": right_names / targets if targets else 0.0,
        "wrong_names": named_wrong,
        "time_to_name": ttn,
        "missed_visible": {
            "under 0.7": sum(v < 0.7 for v in missed),
            "0.7-0.9": sum(0.7 <= v < 0.9 for v in missed),
            "0.9 and more": sum(v >= 0.9 for v in missed),
        },
        "never_named": sorted(p for p in names if p in seen_at and p not in named_at),
        "tracks_per_person": {p: sorted({i for (q, i) in overlap if q == p}) for p in people},
    }
