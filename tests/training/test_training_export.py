"""facerec models --from-checkpoint: a checkpoint becomes ONNX FP32/FP16/INT8 and serving
graphs, passes the parity checks, gets thresholds from the LFW folds it never saw, and is
served by name through the CLI, Triton's repository and the LFW benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.checkpoint_export import export_checkpoint, remove_stale_staging  # noqa: E402
from facerec.errors import FaceRecError  # noqa: E402
from facerec.imaging.decode import read_image  # noqa: E402
from facerec.models import facerec_home, load_model_card  # noqa: E402
from facerec.pipeline import FacePipeline, PipelineConfig  # noqa: E402
from facerec.triton.repository import write_repository  # noqa: E402
from tests.support.cli import run_cli  # noqa: E402
from tests.support.data import LFW  # noqa: E402
from training.augment import standardize, to_float_nchw  # noqa: E402
from training.checkpoint import save_checkpoint  # noqa: E402
from training.inception_resnet_v1 import InceptionResnetV1  # noqa: E402
from training.run import base_weights  # noqa: E402

NAME = "test-ft"
# Two folds over the bundled LFW faces, sharing no identities.
PAIRS = """2\t3
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Amber_Tamblyn\t1\t2
Abel_Pacheco\t1\tAkhmed_Zakayev\t1
Mikhail_Gorbachev\t1\tAbel_Pacheco\t4
Amber_Tamblyn\t1\tAkhmed_Zakayev\t3
Anders_Fogh_Rasmussen\t1\t3
Angela_Bassett\t1\t5
Ann_Veneman\t3\t5
Anders_Fogh_Rasmussen\t1\tDean_Barker\t1
Ann_Veneman\t3\tPortia_de_Rossi\t1
Aaron_Eckhart\t1\tAaron_Peirsol\t1
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FACEREC_HOME of its own: the real published models linked in, nothing else."""
    h = tmp_path_factory.mktemp("home")
    (h / "models").mkdir()
    real = facerec_home()
    for f in (real / "models").glob("*.onnx"):
        (h / "models" / f.name).symlink_to(f)
    (h / "weights").symlink_to(real / "weights")
    return h


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lfw")
    shutil.copytree(LFW, d / "images")
    (d / "pairs.txt").write_text(PAIRS)
    return d


def _checkpoint(path: Path, identities: list[str], seed: int = 0) -> InceptionResnetV1:
    """The published weights with the projection nudged: a model of its own."""
    model = InceptionResnetV1()
    model.load_state_dict(base_weights("facenet128")[0])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.bottleneck.weight
        w += 0.5 * w.std() * torch.randn(w.shape, generator=g)
    save_checkpoint(path, model.eval(), {"identities": identities, "base": {"model": "facenet128"}})
    return model.eval()


@pytest.fixture(scope="module")
def exported(home: Path, lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ckpt = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = _checkpoint(ckpt, ["Ben_Affleck", "John_Kerry"])
    card = export_checkpoint(ckpt, NAME, lfw, home=home, progress=False, parity_images=6)
    return {"card": card, "model": model, "checkpoint": ckpt}


@pytest.mark.slow
def test_artefacts_parity_and_calibration(exported: dict[str, Any], home: Path) -> None:
    card = exported["card"]
    assert card["export"]["parity"]["embedding_cosine_min"] >= 0.99999
    assert card["export"]["int8"]["cosine_vs_fp32_min"] > 0.99
    assert card["export"]["fp16"]["cosine_vs_fp32_min"] > 0.9999
    for precision in ("fp32", "fp16", "int8"):
        for suffix in ("", "-serving"):
            assert (home / "models" / f"{NAME}-{precision}{suffix}.onnx").is_file()
    assert card["calibration_data"]["lfw_folds"] == [0, 1]
    assert {(c["precision"], c["flip"]) for c in card["calibrations"]} == {
        (p, f) for p in ("fp32", "fp16", "int8") for f in (True, False)
    }
    loaded = load_model_card(NAME, home)
    assert loaded.identity == f"{NAME}:{card['weights_sha256'][:16]}"
    assert loaded.identity != load_model_card("facenet128").identity
    # thresholds in the published card's form (the FAR one: above every impostor pair here)
    fp32 = loaded.calibration("similarity", True, "fp32")
    assert -1 < fp32.threshold_at_far("1e-3") < 1 and -1 < fp32.threshold < 1
    assert "folds 0, 1" in fp32.verification_far_source
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".export")]


@pytest.mark.slow
def test_served_by_name_through_the_cli(exported: dict[str, Any], home: Path) -> None:
    """The CLI's FP32 embedding of a face is the checkpoint's PyTorch embedding of the same
    aligned crop (flip-averaged), and differs from the published model's."""
    key = "Amber_Tamblyn_0001"
    path = LFW / f"{key}.jpg"
    code, doc = run_cli(
        "embed", str(path), "--model", NAME, "--precision", "fp32", "--json", home=home
    )
    assert code == 0
    served = np.array(doc["images"][0]["faces"][0]["embedding"], np.float32)
    assert doc["model_id"] == f"{NAME}:{exported['card']['weights_sha256'][:16]}"
    pipeline = FacePipeline.local(PipelineConfig(precision="fp32", model=NAME), home)
    assert pipeline.model_id == f"{NAME}:{exported['card']['weights_sha256'][:16]}"
    image = read_image(path)
    (det,) = pipeline.detect([image])
    crop = torch.from_numpy(pipeline.align(image, det.take([0])))
    with torch.no_grad():
        x = standardize(to_float_nchw(crop))
        e = exported["model"](x) + exported["model"](x.flip(3))
    reference = torch.nn.functional.normalize(e, dim=1)[0].numpy()
    assert float(served @ reference) >= 0.99999
    code, base = run_cli("embed", str(path), "--precision", "fp32", "--json", home=home)
    assert float(served @ np.array(base["images"][0]["faces"][0]["embedding"])) < 0.999
    code, doc = run_cli("models", "--list", "--json", home=home)
    assert NAME in [m["name"] for m in doc["models"]]
    code, doc = run_cli(
        "verify",
        str(path),
        str(LFW / "Amber_Tamblyn_0002.jpg"),
        "--model",
        NAME,
        "--json",
        home=home,
    )
    calibrated = load_model_card(NAME, home).calibration("similarity", True, "int8").threshold
    assert code == 0 and doc["threshold"] == pytest.approx(calibrated, abs=1e-6)


@pytest.mark.slow
def test_triton_repository_and_bench_select_it(
    exported: dict[str, Any], home: Path, lfw: Path, tmp_path: Path
) -> None:
    write_repository("cpu", tmp_path / "repo", home, model=NAME)
    config = (tmp_path / "repo" / "embedder" / "config.pbtxt").read_text()
    assert f'string_value: "{NAME}"' in config and exported["card"]["weights_sha256"] in config
    served = (tmp_path / "repo" / "embedder" / "1" / "model.onnx").read_bytes()
    assert served == (home / "models" / f"{NAME}-int8-serving.onnx").read_bytes()
    code, doc = run_cli(
        "bench",
        "lfw",
        "--data",
        str(lfw),
        "--out",
        str(tmp_path / "b"),
        "--model",
        NAME,
        "--json",
        home=home,
    )
    assert code == 0 and doc["settings"]["model"] == NAME
    assert doc["folds"] == [0, 1] and doc["heldout"]["folds_scored"] == [0, 1]


def test_bad_checkpoints_and_names_write_nothing(home: Path, lfw: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in (home / "models").rglob("*"))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 512))
    torch.save(
        {"format": "facerec-checkpoint/1", "architecture": "resnet18", "model": other.state_dict()},
        tmp_path / "resnet.pt",
    )
    torch.save(other.state_dict(), tmp_path / "bare.pt")
    seen_all = tmp_path / "all.pt"
    _checkpoint(seen_all, ["Abel_Pacheco", "Ann_Veneman"])
    cases = [
        (tmp_path / "resnet.pt", "fine", "wrong_architecture"),
        (tmp_path / "bare.pt", "fine", "wrong_architecture"),
        (tmp_path / "missing.pt", "fine", "checkpoint_not_found"),
        (seen_all, "fine", "no_unseen_folds"),
        (seen_all, "Bad/Name", "invalid_model_name"),
        (seen_all, "facenet128", "model_exists"),
    ]
    for ckpt, name, code in cases:
        with pytest.raises(FaceRecError) as err:
            export_checkpoint(ckpt, name, lfw, home=home, progress=False)
        assert err.value.code == code, (ckpt, name)
    rc, doc = run_cli(
        "models",
        "--from-checkpoint",
        str(tmp_path / "resnet.pt"),
        "--name",
        "fine",
        "--lfw",
        str(lfw),
        "--json",
        home=home,
    )
    assert rc == 1 and doc["error"]["code"] == "wrong_architecture"
    assert sorted(p.name for p in (home / "models").rglob("*")) == before
    rc, doc = run_cli(
        "verify",
        str(LFW / "Amber_Tamblyn_0001.jpg"),
        str(LFW / "Amber_Tamblyn_0002.jpg"),
        "--model",
        "fine",
        "--json",
        home=home,
    )
    assert rc == 1 and doc["error"]["code"] == "unknown_model"


def test_published_model_identity() -> None:
    card = load_model_card("facenet128")
    assert card.identity == "facenet128:6acdd8fb3a3fb2b5"


def test_staging_of_an_interrupted_export_is_removed(tmp_path: Path) -> None:
    """An export killed mid-way leaves ``.export-NAME-PID``; the next one removes it, and
    never the folder of an export still running."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".export-ft-a-{gone.pid}"
    running = tmp_path / f".export-ft-b-{os.getpid()}"
    other = tmp_path / "ft-a-fp32.onnx"
    for d in (stale, running):
        d.mkdir()
        (d / "ft-fp32.onnx").write_bytes(b"x")
    other.write_bytes(b"x")
    assert remove_stale_staging(tmp_path) == [stale.name]
    assert not stale.exists() and running.is_dir() and other.is_file()
