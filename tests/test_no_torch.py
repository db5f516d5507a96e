"""Serving code runs without PyTorch: importing facerec and running the pipeline loads none."""

from __future__ import annotations

import subprocess
import sys

from conftest import lfw_path

SCRIPT = """
import sys
import facerec.cli.main, facerec.pipeline, facerec.evaluation.lfw
from facerec.imaging.decode import read_image
from facerec.pipeline import FacePipeline
(result,) = FacePipeline.local().analyze([read_image(sys.argv[1])])
assert result.faces and result.faces[0].embedding is not None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision", "h5py",
               "onnx", "fastapi", "flask", "starlette", "training", "export", "gateway",
               "cryptography", "sqlalchemy", "pymilvus"})
print(",".join(heavy))
"""


def test_pipeline_imports_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(lfw_path("Dean_Barker_0001"))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == ""
