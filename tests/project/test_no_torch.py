"""Serving code runs without PyTorch: importing facerec and running the pipeline loads none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.data import ROOT, lfw_path

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


FORBIDDEN = {
    "torch", "torchvision", "h5py", "onnx", "fastapi", "flask", "starlette", "uvicorn",
    "pydantic", "pydantic_settings", "training", "export", "gateway", "cryptography",
    "sqlalchemy", "pymilvus",
}  # fmt: skip


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_core_package_imports_nothing_heavy_anywhere() -> None:
    """Statically, not only at run time: no module of ``facerec`` (lazy imports inside
    functions included) imports torch, a web framework, or the gateway/export/training
    packages."""
    core = ROOT / "facerec"
    offenders = {
        str(path.relative_to(core)): sorted(_imported_roots(path) & FORBIDDEN)
        for path in sorted(core.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
