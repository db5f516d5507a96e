"""Where the images of a face data set are and whose face each one is.

Two layouts are read:

- ``folders``: one sub-folder per identity, named after it, holding its images
  (VGGFace2's ``root/<identity>/<image>.jpg``);
- ``flat``: every image in one folder, the identity in the file name, LFW style
  (``George_W_Bush_0012.jpg`` is ``George_W_Bush``). An LFW folder with ``images/`` and
  ``pairs.txt`` is read from its ``images/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facerec.errors import FaceRecError
from facerec.evaluation.pairs import identity_of
from facerec.imaging.decode import IMAGE_SUFFIXES

Layout = Literal["auto", "folders", "flat"]
LAYOUTS: tuple[Layout, ...] = ("auto", "folders", "flat")


class DatasetError(FaceRecError):
    """A data set cannot be used as given (codes: ``not_found``, ``empty_dataset``,
    ``mixed_layout``, ``too_few_identities``, ``no_faces``, ``output_exists``,
    ``corrupt_image``, ``invalid_dataset``)."""

    code = "invalid_dataset"
    http_status = 422


@dataclass(frozen=True)
class SourceImage:
    """One image of a source data set."""

    path: Path
    identity: str

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class SourceListing:
    """What :func:`scan_source` found: the images, and the files it could not place
    (path -> reason)."""

    root: Path
    layout: Literal["folders", "flat"]
    images: list[SourceImage]
    unplaced: dict[str, str]

    @property
    def identities(self) -> list[str]:
        return sorted({im.identity for im in self.images})


def _is_image(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def scan_source(src: Path, layout: Layout = "auto") -> SourceListing:
    """List ``src``'s images and their identities, in a stable (sorted) order.

    ``auto`` picks ``folders`` when ``src`` has sub-folders holding images and ``flat``
    when it holds images itself; both at once is ambiguous (``mixed_layout``). Raises
    :class:`DatasetError` (``not_found``, ``empty_dataset``, ``mixed_layout``).
    """
    if not src.is_dir():
        raise DatasetError(f"{src} is not a folder", code="not_found")
    if layout == "auto" and (src / "images").is_dir() and (src / "pairs.txt").is_file():
        src = src / "images"  # an LFW folder as this project's benchmark reads it
    entries = _entries(src)
    files = [e for e in entries if _is_image(e)]
    folders = [e for e in entries if e.is_dir()]
    with_images = [f for f in folders if any(_is_image(e) for e in _entries(Path(f.path)))]
    if layout == "auto":
        if files and with_images:
            raise DatasetError(
                f"{src} holds both images and identity folders with images; pass "
                "--layout folders or --layout flat",
                code="mixed_layout",
            )
        layout = "flat" if files else "folders"
    images: list[SourceImage] = []
    unplaced: dict[str, str] = {}
    if layout == "flat":
        for e in files:
            try:
                images.append(SourceImage(Path(e.path), identity_of(Path(e.name).stem)))
            except FaceRecError as exc:
                unplaced[e.path] = f"{exc.code}: {exc.message}"
    else:
        for e in files:
            unplaced[e.path] = "not_in_identity_folder: images belong in <identity>/ folders"
        for f in with_images:
            images.extend(
                SourceImage(Path(e.path), f.name) for e in _entries(Path(f.path)) if _is_image(e)
            )
    if not images:
        raise DatasetError(
            f"no images found in {src} ({layout} layout: "
            + ("Person_Name_0001.jpg files" if layout == "flat" else "<identity>/<image> files")
            + ")",
            code="empty_dataset",
        )
    return SourceListing(src, layout, images, unplaced)
