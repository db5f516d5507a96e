"""The repository's root and the data the tests use: real LFW faces in ``tests/data``
(``lfw/``: pairs and strangers; ``gallery/``: eight people with several photos each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
LFW = DATA / "lfw"
GALLERY = DATA / "gallery"

# Same-person and different-person pairs from LFW's pairs.txt (fold 1).
SAME_PAIRS = [
    ("Abel_Pacheco_0001", "Abel_Pacheco_0004"),
    ("Akhmed_Zakayev_0001", "Akhmed_Zakayev_0003"),
    ("Amber_Tamblyn_0001", "Amber_Tamblyn_0002"),
    ("Anders_Fogh_Rasmussen_0001", "Anders_Fogh_Rasmussen_0003"),
    ("Angela_Bassett_0001", "Angela_Bassett_0005"),
    ("Ann_Veneman_0003", "Ann_Veneman_0005"),
]
DIFFERENT_PAIRS = [
    ("Abel_Pacheco_0001", "Akhmed_Zakayev_0001"),
    ("Amber_Tamblyn_0001", "Angela_Bassett_0001"),
    ("Anders_Fogh_Rasmussen_0001", "Dean_Barker_0001"),
    ("Ann_Veneman_0003", "Portia_de_Rossi_0001"),
    ("Mikhail_Gorbachev_0001", "Abel_Pacheco_0004"),
    ("Aaron_Eckhart_0001", "Aaron_Peirsol_0001"),
]


def lfw_path(key: str) -> Path:
    return LFW / f"{key}.jpg"


def lfw_image(key: str, pad: int = 50) -> np.ndarray:
    """An LFW test face, edge-padded like the benchmark pads it."""
    img = read_image(lfw_path(key))
    return pad_edges(img, pad)


FUSED = "facenet128+dlib128"
"""The fused model (FaceNet and dlib's ResNet) the fusion tests run."""
