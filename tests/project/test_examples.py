"""The scripts in ``examples/`` run as they stand, on the bundled faces, and say what they
should."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.servers import Service
from facerec.triton.server import TritonServer
from tests.support.data import ROOT
from tests.support.gateway import running_gateway

EXAMPLES = ROOT / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=EXAMPLES.parent.parent,  # anywhere: the scripts find the data themselves
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_every_example_is_listed_in_the_readme() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == [
        "identify_folder.py",
        "rest_client.py",
        "triton_client.py",
        "verify_two_photos.py",
        "watch_video.py",
        "websocket_client.py",
    ]
    assert all(f"`{name}`" in readme for name in scripts)


def test_verify_two_photos() -> None:
    lines = run("verify_two_photos.py").splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Ann_Veneman_0003.jpg / Ann_Veneman_0005.jpg: same person")
    assert lines[1].startswith("Ann_Veneman_0003.jpg / Dean_Barker_0001.jpg: different people")


def test_verify_two_photos_reports_an_error_code(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    photo = EXAMPLES.parent / "tests" / "data" / "lfw" / "Dean_Barker_0001.jpg"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "verify_two_photos.py"), str(photo), str(text)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1 and "[not_an_image]" in done.stdout


def test_identify_folder() -> None:
    out = run("identify_folder.py")
    answers = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    assert out.startswith("gallery: 7 people; threshold 0.6")
    for photo, answer in answers.items():
        person = photo.rsplit("_", 1)[0]
        expected = "unknown" if person == "Xanana_Gusmao" else person  # left out
        assert answer.split(" (")[0] == expected, (photo, answer)
    assert len(answers) == 8


def test_watch_video() -> None:
    lines = run("watch_video.py").splitlines()
    assert lines[0] == "enrolled Ben_Affleck from 4 photos"
    assert len(lines) == 2 and ": Ben_Affleck (similarity" in lines[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A running `facerec serve` (development mode) for the clients given --url and --key."""
    with running_gateway(tmp_path_factory.mktemp("examples-gateway") / "data") as service:
        yield service


@pytest.mark.integration
def test_rest_client_on_a_server_it_starts() -> None:
    lines = run("rest_client.py").splitlines()
    for name in ("Ben_Affleck", "Choi_Sung-hong", "Cruz_Bustamante"):
        assert any(line.startswith(f"enrolled {name}: ") for line in lines), lines
    assert any(line.startswith("identify Ben_Affleck_0006.jpg: Ben_Affleck (") for line in lines)
    verify = [line for line in lines if line.startswith("verify ")]
    assert len(verify) == 1 and ": same person (similarity" in verify[0]
    assert "job: done, 4 of 4 images" in lines
    answers = dict(line.strip().split(": ", 1) for line in lines if "probes.zip/" in line)
    assert len(answers) == 4
    for image, answer in answers.items():
        person = image.split("/")[-1].rsplit("_", 1)[0]
        expected = "unknown" if person == "Xanana_Gusmao" else person  # never enrolled
        assert answer.split(" (")[0] == expected, (image, answer)
    assert lines[-1] == "deleted 3 of 3 subjects"


@pytest.mark.integration
def test_websocket_client_on_a_running_server(gateway: Service) -> None:
    lines = run("websocket_client.py", "--url", gateway.url, "--key", gateway.key).splitlines()
    assert lines[0] == "enrolled Ben_Affleck from 4 photos"
    assert lines[1].startswith("ready (at most ")
    identified = lines[2:]
    assert identified and all(": Ben_Affleck (similarity" in line for line in identified), lines
    # the example deleted its subject: the gateway is as it found it
    assert gateway.client().get("/v1/subjects").json()["total"] == 0


@pytest.mark.integration
def test_triton_client_on_the_session_server(triton_server: TritonServer) -> None:
    out = run("triton_client.py", "--url", triton_server.grpc_url)
    for photo in ("Ann_Veneman_0003.jpg", "Ann_Veneman_0005.jpg", "Dean_Barker_0001.jpg"):
        assert f"{photo}: 1 face(s)" in out
    assert out.count("embedding norm 1.0000") == 3
    same = float(re.findall(r"Ann_Veneman_0005: (-?[0-9.]+) \(same person\)", out)[0])
    different = float(re.findall(r"Dean_Barker_0001: (-?[0-9.]+) \(two people\)", out)[0])
    assert same > 0.7 and different < 0.3, out
