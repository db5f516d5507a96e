"""Benchmark inputs: LFW images as the LFW benchmark sees them, and larger scenes with
several real faces pasted on a textured background."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facerec.imaging.decode import read_image


def lfw_files(lfw_dir: Path, count: int) -> list[Path]:
    """``count`` LFW images spread evenly over the sorted file list."""
    files = sorted((lfw_dir / "images").glob("*.jpg")) or sorted(lfw_dir.rglob("*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def scene(faces: list[Path], width: int, height: int, seed: int) -> bytes:
    """A JPEG of ``width`` x ``height`` with the given face crops at random non-overlapping
    places and sizes, on smoothed noise (so the detector has clutter to reject)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    canvas = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    taken: list[tuple[int, int, int]] = []
    for path in faces:
        for _ in range(200):
            side = int(rng.integers(height // 6, height // 3))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(
                abs(x - a) > (side + s) // 2 + 10 or abs(y - b) > (side + s) // 2 + 10
                for a, b, s in taken
            ):
                face = cv2.resize(read_image(path), (side, side), interpolation=cv2.INTER_AREA)
                canvas[y : y + side, x : x + side] = face
                taken.append((x, y, side))
                break
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=90)
    return buf.getvalue()
