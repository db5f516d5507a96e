"""The GPU run's script, on this CPU with a tiny configuration: it imports nothing the
GPU machine lacks, and returns what the coordinator needs (metrics, plots, one fold's
weights in files under 16 MiB that rebuild a checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from facerec.dataset.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from facerec.pipeline import PipelineConfig  # noqa: E402
from tests.support.data import DATA, ROOT  # noqa: E402
from training.checkpoint import load_weights  # noqa: E402

# Four folds of two gallery people each (LFW's pairs.txt format).
PAIRS = """4\t2
Ben_Affleck\t2\t3
Choi_Sung-hong\t1\t4
Ben_Affleck\t4\tChoi_Sung-hong\t2
Ben_Affleck\t5\tChoi_Sung-hong\t3
Cruz_Bustamante\t1\t2
Dennis_Hastert\t2\t5
Cruz_Bustamante\t3\tDennis_Hastert\t3
Cruz_Bustamante\t4\tDennis_Hastert\t4
Howard_Dean\t1\t3
Jeremy_Greenstock\t2\t10
Howard_Dean\t2\tJeremy_Greenstock\t3
Howard_Dean\t4\tJeremy_Greenstock\t5
John_Kerry\t1\t9
Xanana_Gusmao\t1\t5
John_Kerry\t3\tXanana_Gusmao\t2
John_Kerry\t4\tXanana_Gusmao\t3
"""

# Installed here, absent on the GPU machine: importing any of them fails in the
# subprocess, as it would there (onnx and onnxruntime are there; the script's own check
# reports them if imported).
BLOCKED = [
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "uvicorn",
    "h5py",
    "sqlalchemy",
    "cryptography",
    "pymilvus",
    "milvus_lite",
    "tritonclient",
    "psycopg",
    "httpx",
    "yaml",
    "gateway",
    "export",
]
FACEREC_ALLOWED = [
    "facerec",
    "facerec.errors",
    "facerec.evaluation",
    "facerec.evaluation.pairs",
    "facerec.evaluation.metrics",
]
RUNNER = """
import importlib.abc, json, runpy, sys
blocked, allowed, args = json.loads(sys.argv[1])
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked or (name.startswith("facerec") and name not in allowed):
            raise ModuleNotFoundError(f"{name} is not on the GPU machine")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_tenfold", *args]
runpy.run_module("training.gpu_tenfold", run_name="__main__")
"""


@pytest.mark.slow
def test_tiny_run_on_cpu(tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    prepare_dataset(DATA / "gallery", crops, PipelineConfig(), PrepareOptions(pad=50), False)
    (tmp_path / "pairs.txt").write_text(PAIRS)
    carry = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.gpu_carry",
            "--crops",
            str(crops),
            "--pairs",
            str(tmp_path / "pairs.txt"),
            "--out",
            str(carry),
        ],
        check=True,
        timeout=600,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    out = tmp_path / "out"
    args = [
        "--pack",
        str(carry / "crops"),
        "--weights",
        str(tmp_path / "absent.pt"),
        str(carry / "weights" / "facenet128.half.pt"),
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--device",
        "cpu",
        "--time-budget",
        "400",
        "--folds",
        "0",
        "--p",
        "2",
        "--k",
        "2",
        "--max-epochs",
        "1",
        "--threads",
        "1",
        "--measure-steps",
        "1",
        "--freeze-until",
        "mixed_7a",
    ]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps([BLOCKED, FACEREC_ALLOWED, args])],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fold 0 done" in done.stdout and "imported beyond" not in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files)
    assert {"metrics.json", "folds.png", "curves.png", "log.txt"} <= set(files)
    doc = json.loads((out / "metrics.json").read_text())
    fold = doc["folds"][0]
    assert doc["summary"]["folds_done"] == [0]
    assert fold["split"]["test_fold"] == 0 and fold["split"]["validation_fold"] == 1
    assert fold["split"]["train_identities"] == 4 and len(fold["test"]["scores"]) == 4
    assert 0 <= fold["test"]["accuracy"] <= 1 and doc["measured"]["epochs_per_fold"] == 1
    state = load_weights(out / "fold0.part0.pt")
    assert len(state) == len(torch.load(carry / "weights" / "facenet128.half.pt")["model"])
