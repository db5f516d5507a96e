"""The command line: JSON shapes, per-file errors, exit codes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facerec.pipeline import FacePipeline
from tests.support.cli import FACEREC, run_cli
from tests.support.data import GALLERY, lfw_path
from tests.support.data import LFW as LFW_DIR

run = partial(run_cli, ok=True, timeout=300)  # a run that exits 0 unless ok=False


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "empty": d / "empty.jpg",
        "text": d / "notes.jpg",
        "truncated": d / "truncated.jpg",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n" * 10)
    data = lfw_path("Amber_Tamblyn_0001").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    return files


def check_face(face: dict[str, Any]) -> None:
    assert len(face["box"]) == 4 and face["box"][0] < face["box"][2]
    assert 0 < face["score"] <= 1
    assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])


def test_help_lists_every_command() -> None:
    _, out = run("--help")
    # "models" comes from export, "serve" etc. from gateway: entry points, not core imports
    for command in ("models", "detect", "embed", "verify", "identify", "bench", "serve", "keys"):
        assert command in out
    for command in ("models", "detect", "embed", "verify", "identify"):
        _, text = run(command, "--help")
        assert "usage: facerec" in text


def test_closed_pipe_ends_quietly() -> None:
    """`facerec ... --json | head -1`: no BrokenPipeError traceback, like other Unix tools."""
    done = subprocess.run(
        f"{shlex.join(FACEREC)} detect --json {shlex.quote(str(lfw_path('Amber_Tamblyn_0001')))}"
        " | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_detect_json_and_bad_files_in_one_batch(bad_files: dict[str, Path]) -> None:
    good = lfw_path("Amber_Tamblyn_0001")
    _, doc = run(
        "detect",
        "--json",
        good,
        bad_files["empty"],
        bad_files["text"],
        bad_files["truncated"],
        good,
    )
    entries = doc["images"]
    assert entries[0]["image"] == str(good)
    check_face(entries[0]["faces"][0])
    assert [e["error"]["code"] for e in entries[1:4]] == [
        "empty_file",
        "not_an_image",
        "truncated_image",
    ]
    assert all(e["error"]["message"] for e in entries[1:4])
    assert entries[4]["faces"] == entries[0]["faces"]  # the batch went on


def test_embed_json(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    _, doc = run("embed", "--json", lfw_path("Dean_Barker_0001"), blank)
    assert doc["embedding_size"] == 128
    face = doc["images"][0]["faces"][0]
    check_face(face)
    assert len(face["embedding"]) == 128
    assert doc["images"][1]["error"]["code"] == "no_face"


def test_many_files_in_worker_processes_match_one_process(bad_files: dict[str, Path]) -> None:
    """34 files (the default takes worker processes from 32 on, one per core): the same
    faces and embeddings, in input order, and a bad file's error in its place, as when
    everything runs in this process."""
    faces = sorted(LFW_DIR.glob("*.jpg"))
    files = [*faces, bad_files["text"], *faces][:34]
    _, many = run("embed", "--json", *files)
    _, one = run("embed", "--json", "--processes", "1", *files)
    assert [i["image"] for i in many["images"]] == [str(f) for f in files]
    assert [i["image"] for i in one["images"]] == [str(f) for f in files]
    for a, b in zip(many["images"], one["images"], strict=True):
        assert ("error" in a) == ("error" in b)
        if "error" in a:
            assert a["error"]["code"] == b["error"]["code"] == "not_an_image"
            continue
        assert len(a["faces"]) == len(b["faces"]) >= 1
        for fa, fb in zip(a["faces"], b["faces"], strict=True):
            assert np.allclose(fa["box"], fb["box"], atol=1e-3)
            assert float(np.dot(fa["embedding"], fb["embedding"])) > 0.9999


def test_worker_processes_choice(local_pipeline: FacePipeline) -> None:
    from facerec.batch import PROCESS_MIN_FILES, worker_processes
    from facerec.runtime import default_threads

    assert worker_processes(local_pipeline, PROCESS_MIN_FILES - 1) == 1
    assert worker_processes(local_pipeline, PROCESS_MIN_FILES) == default_threads()
    assert worker_processes(local_pipeline, 9, requested=2) == 2
    assert worker_processes(local_pipeline, 3, requested=2) == 1  # one batch of 8: one worker
    assert worker_processes(local_pipeline, 17, requested=8, batch=8) == 3
    assert worker_processes(local_pipeline, 500, requested=1) == 1


def test_verify_json() -> None:
    _, same = run("verify", "--json", lfw_path("Ann_Veneman_0003"), lfw_path("Ann_Veneman_0005"))
    assert same["match"] is True and same["similarity"] >= same["threshold"]
    assert {"match", "similarity", "threshold"} <= set(same)
    _, diff = run("verify", "--json", lfw_path("Ann_Veneman_0003"), lfw_path("Dean_Barker_0001"))
    assert diff["match"] is False and diff["threshold"] == same["threshold"]


def test_verify_without_face_fails_with_code(bad_files: dict[str, Path], tmp_path: Path) -> None:
    code, doc = run("verify", "--json", lfw_path("Ann_Veneman_0003"), bad_files["text"], ok=False)
    assert code == 1 and doc["error"]["code"] == "not_an_image"


def test_identify_json(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    for key in ("Abel_Pacheco_0001", "Akhmed_Zakayev_0001", "Amber_Tamblyn_0001"):
        person = gallery / key.rsplit("_", 1)[0]
        person.mkdir(parents=True)
        shutil.copy(lfw_path(key), person)
    _, doc = run(
        "identify",
        "--json",
        "--gallery",
        gallery,
        "--top-k",
        "2",
        lfw_path("Abel_Pacheco_0004"),
        lfw_path("Dean_Barker_0001"),
    )
    known, stranger = doc["images"]
    face = known["faces"][0]
    check_face(face)
    assert face["match"] == "Abel_Pacheco"
    assert face["candidates"][0]["subject"] == "Abel_Pacheco"
    assert face["candidates"][0]["similarity"] >= doc["threshold"]
    assert len(face["candidates"]) == 2
    assert stranger["faces"][0]["match"] is None
    assert doc["gallery"]["subjects"] == 3 and doc["gallery_size"] == 3


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four people, four photos each, plus a stranger's photo filed under Ben Affleck and a
    profile photo of Xanana Gusmao: both must be refused, not enrolled."""
    root = tmp_path_factory.mktemp("people")
    for name in ("Ben_Affleck", "Howard_Dean", "Cruz_Bustamante", "Xanana_Gusmao"):
        (root / name).mkdir()
        for photo in sorted(GALLERY.glob(f"{name}_*.jpg"))[:4]:
            shutil.copy(photo, root / name)
    shutil.copy(GALLERY / "John_Kerry_0001.jpg", root / "Ben_Affleck")
    return root


MATED = {
    "Ben_Affleck_0006": "Ben_Affleck",
    "Howard_Dean_0005": "Howard_Dean",
    "Cruz_Bustamante_0005": "Cruz_Bustamante",
}
STRANGERS = ["Dean_Barker_0001", "Mikhail_Gorbachev_0001", "Portia_de_Rossi_0001"]


def identify(people: Path, *options: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    probes = [GALLERY / f"{k}.jpg" for k in MATED] + [lfw_path(k) for k in STRANGERS]
    done = subprocess.run(
        [*FACEREC, "identify", "--json", "--gallery", str(people), *options, *map(str, probes)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in done.stderr, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    doc["returncode"] = done.returncode
    return doc


def matches(doc: dict[str, Any]) -> dict[str, str | None]:
    return {Path(e["image"]).stem: e["faces"][0]["match"] for e in doc["images"]}


def test_identify_at_an_fpir_for_the_gallery_size(
    people: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACEREC_IDENTIFY_FPIR", raising=False)
    doc = identify(people)
    assert doc["returncode"] == 0
    assert doc["fpir"] == 1e-3 and doc["gallery_size"] == 4 and doc["method"] == "centroid"
    assert doc["threshold_source"] == "calibrated"
    assert 0.5 < doc["threshold"] < 0.7  # well above the 1:1 threshold (0.415)
    refused = {Path(e["image"]).name: e["error"]["code"] for e in doc["gallery"]["errors"]}
    assert refused == {
        "John_Kerry_0001.jpg": "inconsistent_face",
        "Xanana_Gusmao_0002.jpg": "extreme_pose",
    }
    assert doc["gallery"]["images"] == 17 and doc["gallery"]["subjects"] == 4
    assert matches(doc) == {**MATED, **dict.fromkeys(STRANGERS)}


def test_identify_fpir_setting_score_method_and_force(people: Path) -> None:
    strict = identify(people)
    loose = identify(people, "--score", "max", "--force", env={"FACEREC_IDENTIFY_FPIR": "0.1"})
    assert loose["fpir"] == 0.1 and loose["method"] == "max"
    assert loose["threshold"] < strict["threshold"]
    refused = [e["error"]["code"] for e in loose["gallery"]["errors"]]
    assert refused == ["extreme_pose"]  # forced: the odd photo is kept, the profile is not
    flag = identify(people, "--fpir", "0.01", env={"FACEREC_IDENTIFY_FPIR": "0.1"})
    assert flag["fpir"] == 0.01  # the option wins over the setting


def test_identify_explicit_threshold_and_bad_fpir(people: Path) -> None:
    doc = identify(people, "--threshold", "0.99")
    assert doc["threshold"] == 0.99 and doc["fpir"] is None
    assert doc["threshold_source"] == "explicit"
    assert set(matches(doc).values()) == {None}
    bad = identify(people, "--fpir", "1e-6")
    assert bad["returncode"] == 1 and bad["error"]["code"] == "fpir_out_of_range"
    worse = identify(people, env={"FACEREC_IDENTIFY_FPIR": "often"})
    assert worse["returncode"] == 1 and worse["error"]["code"] == "invalid_argument"


def test_bench_lfw_openset(tmp_path: Path) -> None:
    """The open-set benchmark end to end on the bundled faces (57 images, 19 people)."""
    data = tmp_path / "lfw" / "images"
    data.mkdir(parents=True)
    for photo in [*LFW_DIR.glob("*.jpg"), *GALLERY.glob("*.jpg")]:
        shutil.copy(photo, data)
    out = tmp_path / "out"
    args = ["bench", "lfw-openset", "--data", tmp_path / "lfw", "--out", out, "--json"]
    _, doc = run(*args)
    saved = json.loads((out / "openset.json").read_text())
    assert saved == doc
    assert [g["G"] for g in doc["galleries"]] == ["100", "1000", "all"]
    for g in doc["galleries"]:
        assert 0 <= g["rank1"] <= 1
        assert set(g["dir_at_fpir"]) == set(g["thresholds"]) == {"0.1", "0.01", "0.001"}
        assert g["dir_at_fpir"]["0.1"] >= g["dir_at_fpir"]["0.001"]
    assert doc["protocol"]["images"] == 57
    assert set(doc["results"]) == {"max", "topk", "centroid", "centroid+gates"}
    assert (out / "det.png").stat().st_size > 10_000
    cache = (out / "embeddings.npz").stat().st_mtime_ns
    _, again = run(*args)
    assert (out / "embeddings.npz").stat().st_mtime_ns == cache  # embedded once
    assert again["galleries"] == doc["galleries"]


def test_identify_with_missing_gallery_fails() -> None:
    code, doc = run(
        "identify", "--json", "--gallery", "/nonexistent", lfw_path("Abel_Pacheco_0004"), ok=False
    )
    assert code == 1 and doc["error"]["code"] == "not_found"
