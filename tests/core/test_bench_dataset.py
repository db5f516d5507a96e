"""``facerec bench dataset DIR``: the report a new user gets on a folder of their own faces,
checked against figures computed independently from ``facerec embed --single``."""

from __future__ import annotations

import json
import os
import shutil
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facerec.errors import FaceRecError
from facerec.evaluation import dataset_card
from facerec.evaluation.dataset import DatasetFaces, rate_key, sample_pairs
from facerec.evaluation.dataset_report import run_dataset
from facerec.evaluation.metrics import equal_error_rate, roc_curve
from facerec.models import facerec_home, load_model_card
from facerec.pipeline import FacePipeline, PipelineConfig
from tests.support.cli import run_cli
from tests.support.data import GALLERY, LFW


def person_folders(root: Path) -> Path:
    """The bundled photos laid out as a user's dataset: one sub-folder per person
    (8 people with 5 photos, 6 with 2, 5 with 1)."""
    for f in [*GALLERY.glob("*.jpg"), *LFW.glob("*.jpg")]:
        person = root / f.stem.rsplit("_", 1)[0]
        person.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, person / f.name)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = person_folders(tmp_path_factory.mktemp("people"))
    (root / "Ben_Affleck" / "notes.txt").write_text("not a photo\n")
    data = (root / "Howard_Dean" / "Howard_Dean_0001.jpg").read_bytes()
    (root / "Howard_Dean" / "Howard_Dean_0009.jpg").write_bytes(data[: len(data) // 3])
    sky = np.linspace(0, 255, 200 * 200 * 3).reshape(200, 200, 3).astype(np.uint8)
    Image.fromarray(sky).save(root / "John_Kerry" / "John_Kerry_0099.png")
    (root / "README.md").write_text("a stray file at the top: no person's photo\n")
    (root / "Ben_Affleck" / ".DS_Store").write_bytes(b"\0\1")
    return root


@pytest.fixture(scope="module")
def report(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report")
    code, doc = run_cli(
        "bench", "dataset", dataset, "--out", out, "--latency-images", "5", "--json"
    )
    assert code == 0, doc
    assert json.loads((out / "report.json").read_text()) == doc
    result: dict[str, Any] = {**doc, "_out": str(out)}
    return result


def test_report_counts_every_file_and_says_why_one_was_not_used(
    report: dict[str, Any], dataset: Path
) -> None:
    d = report["dataset"]
    assert d["identities"] == 19
    assert d["images"] == 40 + 17 + 3  # the junk is counted among the files found
    failures = d["failures"]
    unreadable = {Path(f["file"]).name for f in failures["unreadable"]["files"]}
    assert unreadable == {"notes.txt", "Howard_Dean_0009.jpg"}
    assert [Path(f["file"]).name for f in failures["no_face"]["files"]] == ["John_Kerry_0099.png"]
    assert failures["refused"]["count"] == len(failures["refused"]["files"])
    assert all(f["code"] for g in failures.values() for f in g["files"])
    counted = sum(g["count"] for g in failures.values())
    assert d["faces_used"] == d["images"] - counted
    assert d["ignored_files"] == [str(dataset / "README.md")]
    assert d["per_identity"]["Ben_Affleck"]["images"] == 6
    assert sum(p["faces_used"] for p in d["per_identity"].values()) == d["faces_used"]
    out = Path(report["_out"])
    for name in ("report.md", "roc.png", "scores.png", "det.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "notes.txt" in md and "## Identification (1:N, open set)" in md


def test_eer_agrees_with_embeddings_from_facerec_embed(report: dict[str, Any]) -> None:
    """The same photos through ``facerec embed --single``: every pair scored and the EER
    found by a plain threshold sweep, without the benchmark's code."""
    failed = {f["file"] for g in report["dataset"]["failures"].values() for f in g["files"]}
    root = Path(report["dataset"]["dir"])
    photos = sorted(
        p for p in root.glob("*/*") if not p.name.startswith(".") and str(p) not in failed
    )
    assert len(photos) == report["dataset"]["faces_used"]
    code, doc = run_cli("embed", "--single", *photos, "--json")
    assert code == 0
    x = {e["image"]: np.array(e["faces"][0]["embedding"]) for e in doc["images"]}
    genuine: list[float] = []
    impostor: list[float] = []
    for a, b in combinations(photos, 2):
        s = float(x[str(a)] @ x[str(b)])
        (genuine if a.parent == b.parent else impostor).append(s)
    v = report["verification"]
    assert (v["genuine_pairs"], v["impostor_pairs"]) == (len(genuine), len(impostor))
    g, i = np.array(genuine), np.array(impostor)
    best = min((max(np.mean(g < t), np.mean(i >= t)) for t in np.unique(np.r_[g, i])), default=1.0)
    # the sweep's EER is the larger of the two rates at the best threshold; the report's
    # interpolates between the two points around the crossing: within one pair of it
    assert abs(v["eer"] - best) <= 1 / min(len(g), len(i)) + 1e-9
    assert v["threshold"] == load_model_card().calibration("similarity", True, "int8").threshold
    at = v["threshold"]
    assert v["tar_at_threshold"] == pytest.approx(np.mean(g >= at))
    assert v["far_at_threshold"] == pytest.approx(np.mean(i >= at))


def test_report_has_the_keys_users_script_against(report: dict[str, Any]) -> None:
    v, i = report["verification"], report["identification"]
    assert set(v["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    # some fifty faces give about 1,400 impostor pairs: 1e-4 cannot be measured, and says so
    assert v["impostor_pairs"] < 10_000 and v["tar_at_far"]["1e-4"]["tar"] is None
    assert "impostor pairs" in v["tar_at_far"]["1e-4"]["reason"]
    assert v["tar_at_far"]["1e-2"]["tar"] is not None
    assert 0.9 <= v["best_accuracy"] <= 1.0 and 0.0 <= v["eer"] <= 0.1
    split = i["split"]
    assert split["heldout_identities"] == round(0.2 * report["dataset"]["identities_used"])
    assert split["nonmated_probes"] > 0 and split["mated_probes"] > 0
    assert 0.8 <= i["rank1"] <= i["rank5"] <= 1.0
    assert set(i["dir_at_fpir"]) == {"1e-1", "1e-2", "1e-3"}
    point = i["operating_point"]
    assert point["configured_fpir"] == 1e-3 and point["gallery_size"] == split["gallery_identities"]
    assert point["false_alarms"] == round(point["measured_fpir"] * split["nonmated_probes"])
    stages = report["latency_ms"]["stages"]
    assert set(stages) >= {"decode", "detect", "align", "embed", "match"}
    assert all(s["p50"] <= s["p95"] for s in stages.values())
    assert report["images_per_second"] > 0
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["backend"].startswith("onnx")


@pytest.mark.parametrize(
    ("layout", "code"),
    [
        ({}, "empty_dataset"),
        ({"Ann": ["a.jpg", "b.jpg"]}, "too_few_identities"),
        ({"Ann": ["notes.txt"], "Bob": ["b.txt"]}, "too_few_identities"),
        (
            {"Abel_Pacheco": ["Abel_Pacheco_0001.jpg"], "Ann": ["Ann_Veneman_0003.jpg"]},
            "no_genuine_pairs",
        ),
    ],
    ids=["empty", "one-person", "no-images", "one-image-each"],
)
def test_unusable_datasets_get_a_clear_error(
    tmp_path: Path, layout: dict[str, list[str]], code: str
) -> None:
    for person, names in layout.items():
        (tmp_path / person).mkdir()
        for name in names:
            src = LFW / name if (LFW / name).exists() else None
            target = tmp_path / person / name
            if src is not None:
                shutil.copy(src, target)
            elif name.endswith(".jpg"):
                shutil.copy(LFW / "Ann_Veneman_0003.jpg", target)
            else:
                target.write_text("text")
    status, doc = run_cli("bench", "dataset", tmp_path, "--out", tmp_path / "out", "--json")
    assert status == 1
    assert doc["error"]["code"] == code, doc


def test_a_missing_folder_is_not_found(tmp_path: Path) -> None:
    status, doc = run_cli(
        "bench", "dataset", tmp_path / "nowhere", "--out", tmp_path / "out", "--json"
    )
    assert (status, doc["error"]["code"]) == (1, "not_found")


def test_pairs_past_the_cap_are_sampled_distinct_and_never_of_one_person() -> None:
    identity = np.repeat(np.arange(30), 4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(len(identity), 8)).astype(np.float32)
    faces = DatasetFaces([str(k) for k in range(30)], identity, x, [Path("p")] * len(identity))
    pairs = sample_pairs(faces, 100, seed=3)
    assert pairs.genuine_total == 30 * 6 and pairs.impostor_total == 120 * 119 // 2 - 180
    assert (pairs.same.sum(), (~pairs.same).sum()) == (100, 100)
    again = sample_pairs(faces, 100, seed=3)
    assert np.array_equal(pairs.scores, again.scores)  # the seed fixes the sample
    everything = sample_pairs(faces, 10**6, seed=0)
    assert (~everything.same).sum() == everything.impostor_total


def test_equal_error_rate_where_the_rates_cross() -> None:
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    # one genuine pair below one impostor: 25 % of each side is wrong at the crossing
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.0])
    eer, t = equal_error_rate(roc_curve(scores, same))
    assert eer == pytest.approx(0.25) and 0.3 < t <= 0.7
    assert equal_error_rate(roc_curve(np.array([0.9, 0.1]), np.array([1, 0], bool)))[0] == 0.0
    assert rate_key(1e-3) == "1e-3" and rate_key(0.01) == "1e-2"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FACEREC_HOME of its own, the published models linked in."""
    (tmp_path / "models").mkdir()
    for f in (facerec_home() / "models").glob("*.onnx"):
        (tmp_path / "models" / f.name).symlink_to(f)
    monkeypatch.setenv("FACEREC_HOME", str(tmp_path))
    return tmp_path


def test_update_card_refuses_a_dataset_too_small_to_calibrate(
    report: dict[str, Any], dataset: Path, home: Path, tmp_path: Path
) -> None:
    status, doc = run_cli(
        "bench",
        "dataset",
        dataset,
        "--out",
        tmp_path / "o",
        "--update-card",
        "ours",
        "--json",
        env=dict(os.environ),
    )
    assert (status, doc["error"]["code"]) == (1, "too_little_data")
    assert "people" in doc["error"]["message"] and "impostor pairs" in doc["error"]["message"]
    assert not (home / "models" / "cards" / "ours.json").exists()


def test_a_calibrated_card_is_selected_by_name(
    local_pipeline: FacePipeline,
    dataset: Path,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the minimums lowered to this small set, the card is written, ``--model NAME``
    selects it, and its embeddings stay comparable with the published model's."""
    for name, value in (
        ("MIN_IDENTITIES", 2),
        ("MIN_IMPOSTOR_PAIRS", 10),
        ("MIN_SEARCHES", 10),
        ("MIN_ERRORS", 1),
    ):
        monkeypatch.setattr(dataset_card, name, value)
    doc, faces, pairs = run_dataset(
        local_pipeline, dataset, tmp_path / "o", latency_images=0, fpir=0.01
    )
    assert doc["identification"]["operating_point"]["configured_fpir"] == 0.01
    path = dataset_card.update_card(local_pipeline, "ours", faces, pairs, 3, 0, "bundled")
    assert path == home / "models" / "cards" / "ours.json"
    card = load_model_card("ours")
    base = local_pipeline.card
    assert card.graphs_name == base.name and card.identity == base.identity
    cal = card.calibration("similarity", True, "int8")
    assert cal.threshold != base.calibration("similarity", True, "int8").threshold
    assert set(cal.verification_far) == {"1e-3"}  # 1e-4 needs more pairs than there are
    table = card.identification_table("similarity", True, "int8", "centroid")
    assert table.fpirs[-1] >= 1 / len(faces.paths)  # no rate finer than the data
    mine = FacePipeline.local(PipelineConfig(model="ours"))
    probe = np.asarray(Image.open(LFW / "Ann_Veneman_0003.jpg"))
    a = mine.analyze([probe], primary_only=True)[0].faces[0].embedding
    b = local_pipeline.analyze([probe], primary_only=True)[0].faces[0].embedding
    assert a is not None and b is not None and float(a @ b) > 0.9999
    assert mine.threshold == cal.threshold
    status, doc = run_cli(
        "identify",
        LFW / "Ann_Veneman_0003.jpg",
        "--gallery",
        dataset,
        "--model",
        "ours",
        "--fpir",
        f"{table.fpirs[0]:g}",
        "--json",
        env=dict(os.environ),
    )
    assert status == 0, doc
    assert doc["threshold_source"] in ("calibrated", "extrapolated")
    with pytest.raises(FaceRecError, match="taken"):
        dataset_card.update_card(local_pipeline, "facenet128", faces, pairs, 3, 0, "bundled")


def test_bad_options_are_named(local_pipeline: FacePipeline, tmp_path: Path) -> None:
    """Every out-of-range option is named in one error, before any photo is read."""
    with pytest.raises(FaceRecError) as caught:
        run_dataset(local_pipeline, tmp_path / "nothing", tmp_path / "o", 0, 1, 0, -1)
    message = str(caught.value)
    assert "--max-pairs must be >= 1" in message
    assert "--latency-images must be >= 0" in message
    assert "--gallery-images" not in message
    assert caught.value.code == "invalid_argument"
