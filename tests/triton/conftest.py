"""What the Triton tests share: the images both backends are compared on, and the
server of the fused model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from devkit import servers
from facerec.imaging.decode import read_image
from facerec.triton.server import TritonServer
from tests.support.data import FUSED, GALLERY, lfw_image


@pytest.fixture(scope="session")
def fused_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver on loopback with the CPU repository of the fused model."""
    if not servers.triton_installed():
        pytest.skip("tritonserver is not installed (scripts/install_triton.sh; .ci/run runs it)")
    with servers.triton_server(tmp_path_factory.mktemp("triton-fused"), model=FUSED) as server:
        yield server


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
