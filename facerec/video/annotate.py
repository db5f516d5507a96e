"""Annotated video: boxes, track ids and names drawn over the frames, written to a file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facerec.errors import InvalidArgumentError
from facerec.video.analyzer import FrameResult

_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
NAMED = (40, 200, 60)  # RGB
UNKNOWN = (230, 160, 30)


def draw(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of ``image`` (RGB uint8[H, W, 3]) with each face's box, track id, name and
    similarity."""
    out = np.ascontiguousarray(image.copy())
    for face in result.faces:
        x1, y1, x2, y2 = (round(v) for v in face.box)
        color = NAMED if face.match else UNKNOWN
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        label = f"#{face.track_id} {face.match or 'unknown'}"
        if face.similarity is not None:
            label += f" {face.similarity:.2f}"
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(0, y1 - h - base - 2)
        cv2.rectangle(out, (x1, top), (x1 + w + 4, top + h + base + 2), color, -1)
        cv2.putText(out, label, (x1 + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return out


class AnnotatedWriter:
    """Writes annotated frames to ``path`` (``.mp4``: MPEG-4 Part 2; ``.avi``/``.mkv``:
    Motion JPEG), opened at the first frame's size."""

    def __init__(self, path: Path, fps: float) -> None:
        suffix = path.suffix.lower()
        if suffix not in _FOURCC:
            raise InvalidArgumentError(
                f"annotated video must be one of {sorted(_FOURCC)}, not {path.name!r}",
                code="invalid_argument",
            )
        self.path = path
        self.fps = fps if fps > 0 else 25.0
        self._fourcc = cv2.VideoWriter.fourcc(*_FOURCC[suffix])
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, image: np.ndarray, result: FrameResult) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), self._fourcc, self.fps, size)
            if not self._writer.isOpened():
                raise InvalidArgumentError(f"cannot write {self.path}", code="cannot_write")
            self._size = size
        frame = draw(image, result)
        if size != self._size:  # a live source came back at another size
            frame = cv2.resize(frame, self._size)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
