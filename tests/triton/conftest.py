"""What the Triton tests share: the images both backends are compared on."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.imaging.decode import read_image
from tests.support.data import GALLERY, lfw_image


@pytest.fixture(scope="module")
def images(group_photo: np.ndarray) -> list[np.ndarray]:
    """One face, one face again, two faces, three faces, and none."""
    return [
        lfw_image("Abel_Pacheco_0001"),
        lfw_image("Angela_Bassett_0005"),
        read_image(GALLERY / "Choi_Sung-hong_0003.jpg"),
        group_photo,
        np.full((120, 160, 3), 128, np.uint8),
    ]
