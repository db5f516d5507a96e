"""Are two photos the same person? 1:1 verification with the public API.

    python examples/verify_two_photos.py PHOTO_A PHOTO_B
    python examples/verify_two_photos.py        # two pairs of the bundled LFW photos

Run `facerec models` once first: it fetches and converts the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

from facerec import FaceRecError, FaceRecognizer

LFW = Path(__file__).resolve().parents[1] / "tests" / "data" / "lfw"
DEFAULT_PAIRS = [
    (LFW / "Ann_Veneman_0003.jpg", LFW / "Ann_Veneman_0005.jpg"),  # the same woman
    (LFW / "Ann_Veneman_0003.jpg", LFW / "Dean_Barker_0001.jpg"),  # two people
]


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        pairs = [(Path(argv[0]), Path(argv[1]))]
    elif not argv:
        pairs = DEFAULT_PAIRS
    else:
        print(__doc__, file=sys.stderr)
        return 2
    # One recognizer holds the models: build it once and reuse it for every call.
    recognizer = FaceRecognizer()
    for a, b in pairs:
        try:
            # Each photo's largest, most central face is embedded; the two embeddings'
            # cosine similarity is compared with the model's calibrated 1:1 threshold.
            result = recognizer.verify(a, b)
        except FaceRecError as exc:
            # Unreadable files and photos without a face say so with a stable code.
            print(f"{a.name} / {b.name}: cannot verify: [{exc.code}] {exc.message}")
            return 1
        verdict = "same person" if result.match else "different people"
        print(
            f"{a.name} / {b.name}: {verdict} "
            f"(similarity {result.similarity:.3f}, threshold {result.threshold:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
