"""Who appears in a video? Faces tracked and named, frame by frame.

    python examples/watch_video.py SOURCE GALLERY_DIR   # a file, rtsp:// URL or camera (0)
    python examples/watch_video.py                      # a short clip of the bundled photos

GALLERY_DIR holds one sub-folder of photos per person. Without arguments, Ben Affleck is
enrolled from four of his bundled photos and a 3-second clip is made in a temp dir: his
fifth photo slides across while a stranger stands still. Prints each `identified` event.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facerec import FaceRecognizer, Gallery

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def make_clip(path: Path) -> Path:
    """30 frames at 10 frames/s: one face moving, one standing still (OpenCV: BGR)."""
    moving = cv2.imread(str(DATA / "gallery" / "Ben_Affleck_0006.jpg"))
    still = cv2.imread(str(DATA / "lfw" / "Aaron_Eckhart_0001.jpg"))
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (420, 220))
    for k in range(30):
        frame = np.full((220, 420, 3), 110, np.uint8)
        frame[35:185, 4 * k : 4 * k + 150] = moving
        frame[35:185, 265:415] = still
        video.write(frame)
    video.release()
    return path


def watch(recognizer: FaceRecognizer, source: str, gallery: Gallery) -> int:
    # Iterating gives each frame's result, then the events it caused (tracks started,
    # identified, lost, ended); the source is closed when the loop ends.
    for item in recognizer.watch(source, gallery):
        doc = item.to_dict()  # one line of `facerec watch --json`
        if doc.get("event") == "identified":
            print(
                f"{doc['time']:6.2f} s  track {doc['track_id']}: {doc['subject']} "
                f"(similarity {doc['similarity']:.3f}, {doc['votes']} votes)"
            )
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        recognizer = FaceRecognizer()
        return watch(recognizer, argv[0], Gallery.from_folder(argv[1], recognizer))
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    recognizer = FaceRecognizer()
    gallery = recognizer.gallery()
    photos = sorted((DATA / "gallery").glob("Ben_Affleck_*.jpg"))[:4]
    print(f"enrolled Ben_Affleck from {gallery.add('Ben_Affleck', photos).accepted} photos")
    with tempfile.TemporaryDirectory() as tmp:
        return watch(recognizer, str(make_clip(Path(tmp) / "clip.avi")), gallery)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
