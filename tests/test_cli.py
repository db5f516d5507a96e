"""The command line: JSON shapes, per-file errors, exit codes."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_path

FACEREC = [sys.executable, "-m", "facerec.cli.main"]


def run(*args: str | Path, ok: bool = True) -> tuple[int, Any]:
    done = subprocess.run(
        [*FACEREC, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    if ok:
        assert done.returncode == 0, done.stderr
    return done.returncode, json.loads(done.stdout) if "--json" in args else done.stdout


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
    assert len(face["candidates"]) == 2
    assert stranger["faces"][0]["match"] is None
    assert doc["gallery"]["subjects"] == 3


def test_identify_with_missing_gallery_fails() -> None:
    code, doc = run(
        "identify", "--json", "--gallery", "/nonexistent", lfw_path("Abel_Pacheco_0004"), ok=False
    )
    assert code == 1 and doc["error"]["code"] == "not_found"
