"""Who is in each photo of a folder? A gallery from a folder, then 1:N identification.

    python examples/identify_folder.py GALLERY_DIR PROBE_DIR
    python examples/identify_folder.py        # the bundled photos, laid out in a temp dir

GALLERY_DIR holds one sub-folder of photos per person, named after them. Without
arguments the gallery is seven of the eight people of tests/data/gallery (four photos
each) and the probes are their fifth photos plus a photo of the eighth: a stranger.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from facerec import FaceRecError, Gallery

BUNDLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "gallery"


def bundled_folders(root: Path) -> tuple[Path, Path]:
    """Lay the bundled photos out as GALLERY_DIR/<person>/*.jpg and PROBE_DIR/*.jpg."""
    people, probes = root / "gallery", root / "probes"
    probes.mkdir(parents=True)
    names = sorted({photo.stem.rsplit("_", 1)[0] for photo in BUNDLED.glob("*.jpg")})
    for name in names:
        photos = sorted(BUNDLED.glob(f"{name}_*.jpg"))
        if name != names[-1]:  # the last person is left out: a stranger to the gallery
            (people / name).mkdir(parents=True)
            for photo in photos[:4]:
                shutil.copy(photo, people / name)
        shutil.copy(photos[-1], probes)
    return people, probes


def identify(people: Path, probes: Path) -> int:
    # Every gallery photo goes through the enrolment checks (one clear face, quality,
    # agreement with the person's other photos); refused photos are reported.
    gallery = Gallery.from_folder(people)
    print(f"gallery: {len(gallery)} people; threshold {gallery.operating_point().threshold:.3f}")
    for refused in gallery.refused:
        print(f"  refused {Path(refused.image).name}: {refused.code}")
    for photo in sorted(probes.iterdir()):
        try:
            faces = gallery.identify(photo)  # one answer per face in the photo
        except FaceRecError as exc:
            print(f"{photo.name}: error [{exc.code}] {exc.message}")
            continue
        if not faces:
            print(f"{photo.name}: no face")
        for face in faces:
            # match: the best candidate if it clears the threshold, else None (unknown)
            best = face.candidates[0]
            print(
                f"{photo.name}: {face.match or 'unknown'} "
                f"(best {best.subject_id}: {best.similarity:.3f})"
            )
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        return identify(Path(argv[0]), Path(argv[1]))
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        return identify(*bundled_folders(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
