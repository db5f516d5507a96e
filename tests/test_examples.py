"""The scripts in ``examples/`` run as they stand, on the bundled faces, and say what they
should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
    assert scripts == ["identify_folder.py", "verify_two_photos.py", "watch_video.py"]
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
